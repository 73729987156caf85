"""Model inputs for batches of multimodal prompts: encode, select/repeat rows, and append responses.

Layout used everywhere (generation, student scoring, teacher scoring):

    [pad ... pad | prompt tokens (incl. image pads) | response tokens | pad ... pad]
     <---------- P columns, left-padded ---------->  <------ T columns, right-padded ------>

so every response starts at column P and its per-token tensors line up as `*_BT` across the student and
teacher forwards, even though the two prompts have different lengths.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PromptBatch:
    """Left-padded, encoded prompts with their images.

    `pixel_values` concatenates the patches of every image of every row; `patches_per_row` says how many
    belong to each row so that rows can be selected or repeated without re-running the image processor.
    `source_B` says which encoded prompt each row is a copy of: rows with the same source are the same prompt
    (same tokens, same images), which lets scoring run a group's shared prompt once (`rlsd.scoring`).
    """

    input_ids_BP: torch.Tensor
    attention_mask_BP: torch.Tensor
    mm_token_type_ids_BP: torch.Tensor
    pixel_values: torch.Tensor | None
    image_grid_thw: torch.Tensor | None
    images_per_row: list[int]
    patches_per_row: list[int]
    source_B: list[int] | None = None
    """Per row, the index of the encoded prompt it copies (None: every row is its own prompt)."""

    @property
    def batch_size(self) -> int:
        return self.input_ids_BP.shape[0]

    def sources(self) -> list[int]:
        """`source_B`, or each row its own source when it is unknown."""
        return list(self.source_B) if self.source_B is not None else list(range(self.batch_size))

    def select(self, rows: list[int] | torch.Tensor, trim: bool = True) -> PromptBatch:
        """The batch made of `rows` (repeats allowed: `repeat(G)` is select of each row G times).

        `trim=False` keeps every column (the rows then line up with this batch's columns).
        """
        rows = [int(r) for r in rows]
        sources = self.sources()
        pixel_values = image_grid_thw = None
        if self.pixel_values is not None:
            patch_start = [0]
            image_start = [0]
            for n_patch, n_img in zip(self.patches_per_row, self.images_per_row):
                patch_start.append(patch_start[-1] + n_patch)
                image_start.append(image_start[-1] + n_img)
            pixel_values = torch.cat([self.pixel_values[patch_start[r]:patch_start[r + 1]] for r in rows])
            image_grid_thw = torch.cat([self.image_grid_thw[image_start[r]:image_start[r + 1]] for r in rows])
        batch = PromptBatch(
            input_ids_BP=self.input_ids_BP[rows],
            attention_mask_BP=self.attention_mask_BP[rows],
            mm_token_type_ids_BP=self.mm_token_type_ids_BP[rows],
            pixel_values=pixel_values,
            image_grid_thw=image_grid_thw,
            images_per_row=[self.images_per_row[r] for r in rows],
            patches_per_row=[self.patches_per_row[r] for r in rows],
            source_B=[sources[r] for r in rows],
        )
        return batch.trim_left_padding() if trim else batch

    def repeat(self, group_size: int) -> PromptBatch:
        """Each row `group_size` times in a row: the layout of a GRPO group."""
        return self.select([r for r in range(self.batch_size) for _ in range(group_size)])

    def trim_left_padding(self) -> PromptBatch:
        """Drop columns that are padding in every row (after selecting a subset of rows)."""
        keep_from = int((self.attention_mask_BP.sum(0) > 0).nonzero()[0]) if self.attention_mask_BP.any() else 0
        if keep_from == 0:
            return self
        self.input_ids_BP = self.input_ids_BP[:, keep_from:]
        self.attention_mask_BP = self.attention_mask_BP[:, keep_from:]
        self.mm_token_type_ids_BP = self.mm_token_type_ids_BP[:, keep_from:]
        return self

    def to(self, device) -> PromptBatch:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return PromptBatch(move(self.input_ids_BP), move(self.attention_mask_BP), move(self.mm_token_type_ids_BP),
                           move(self.pixel_values), move(self.image_grid_thw), list(self.images_per_row),
                           list(self.patches_per_row), None if self.source_B is None else list(self.source_B))

    def model_inputs(self) -> dict:
        """Keyword arguments for `model(...)` / `model.generate(...)` on the prompts alone."""
        inputs = dict(input_ids=self.input_ids_BP, attention_mask=self.attention_mask_BP,
                      mm_token_type_ids=self.mm_token_type_ids_BP)
        if self.pixel_values is not None:
            inputs.update(pixel_values=self.pixel_values, image_grid_thw=self.image_grid_thw)
        return inputs

    def with_responses(self, response_ids_BT: torch.Tensor, response_mask_BT: torch.Tensor) -> dict:
        """Model inputs for prompt + response (for scoring). Response tokens are text (mm type 0)."""
        inputs = self.model_inputs()
        response_ids_BT = response_ids_BT.to(self.input_ids_BP.device)
        response_mask_BT = response_mask_BT.to(self.attention_mask_BP.device, self.attention_mask_BP.dtype)
        inputs["input_ids"] = torch.cat([self.input_ids_BP, response_ids_BT], dim=1)
        inputs["attention_mask"] = torch.cat([self.attention_mask_BP, response_mask_BT], dim=1)
        # M-RoPE positions are computed from mm_token_type_ids over the whole sequence.
        inputs["mm_token_type_ids"] = torch.cat(
            [self.mm_token_type_ids_BP, torch.zeros_like(response_ids_BT, dtype=self.mm_token_type_ids_BP.dtype)],
            dim=1)
        return inputs


def row_chunks(n: int, size: int) -> list[list[int]]:
    """Row indices 0..n-1 in consecutive chunks of `size` (0: one chunk of all rows)."""
    size = size or n
    return [list(range(start, min(start + size, n))) for start in range(0, n, size)]


def encode_prompts(processor, messages: list[list[dict]], images: list[list] | None) -> PromptBatch:
    """Chat messages (one conversation per row) and each row's images -> a left-padded `PromptBatch`.

    `images[i]` is the list of PIL images of row i, in the order of the image placeholders of its messages;
    rows may have zero images. The processor expands each placeholder into the right number of image pads.
    """
    if images is not None and len(images) != len(messages):
        raise ValueError(f"encode_prompts: {len(messages)} conversations but {len(images)} image lists")
    texts = [processor.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in messages]
    images = images if images is not None else [[] for _ in messages]
    for i, (text, imgs) in enumerate(zip(texts, images)):
        n_placeholders = text.count(processor.image_token)
        if n_placeholders != len(imgs):
            raise ValueError(f"encode_prompts: row {i} has {n_placeholders} image placeholders "
                             f"but {len(imgs)} images")
    flat_images = [img for imgs in images for img in imgs]
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"
    enc = processor(text=texts, images=flat_images or None, return_tensors="pt", padding=True)
    images_per_row = [len(imgs) for imgs in images]
    if flat_images:
        patches_per_image = enc["image_grid_thw"].prod(-1).tolist()
        patches_per_row, k = [], 0
        for n in images_per_row:
            patches_per_row.append(int(sum(patches_per_image[k:k + n])))
            k += n
        pixel_values, grid = enc["pixel_values"], enc["image_grid_thw"]
    else:
        patches_per_row, pixel_values, grid = [0] * len(texts), None, None
    return PromptBatch(
        input_ids_BP=enc["input_ids"],
        attention_mask_BP=enc["attention_mask"],
        mm_token_type_ids_BP=enc["mm_token_type_ids"],
        pixel_values=pixel_values,
        image_grid_thw=grid,
        images_per_row=images_per_row,
        patches_per_row=patches_per_row,
        source_B=list(range(len(texts))),
    )
