"""A tiny, offline Qwen3-VL: tokenizer, image-only processor and model, built from a config with no download.

The classes are the real ones (`Qwen3VLForConditionalGeneration`, `Qwen3VLProcessor`,
`Qwen2VLImageProcessorPil`), so everything the project runs on CPU exercises the same code path as the
real Qwen3-VL-2B/8B on a GPU. Only the sizes and the vocabulary are small.

Tokenizer: byte-level BPE with no merges (any text round-trips through the 256 byte tokens) plus
whole-word tokens for the chat template, the prompt phrases and the testbed's vocabulary. A pure byte
tokenizer makes testbed sequences ~2.7x longer and spends most compute on template bytes.

Images: patch 16 px with `spatial_merge_size=1`, so a 96x96 image is 6x6 = 36 visual tokens, one per cell
of the testbed's grids.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rlsd.prompts import PROMPT_PHRASES

# Special tokens of Qwen's chat format (ids 0..N-1 of the added vocabulary, as in the real tokenizer).
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
PAD_TOKEN = "<|endoftext|>"
EOS_TOKEN = "<|im_end|>"  # end of an assistant turn

# Qwen-style chat template; message content is a string or a list of {"type": "image" | "text"} blocks.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Whole-word tokens. Response tags and prompt phrases are added tokens (matched anywhere, before
# pre-tokenisation); words, numbers 0-99 and common punctuation are whole entries of the byte-level vocab,
# with and without a leading space, so ordinary prose costs one token per word.
TAG_TOKENS = ["<thought>", "</thought>", "<answer>", "</answer>"]
WORDS = """
user assistant system
how many what is the of in and or a an are there total sum difference product count counts number numbers
square squares circle circles cell cells grid row rows column columns image picture left right top bottom
red green blue yellow purple orange black white gray pink brown cyan
plus minus times more than fewer less most least largest smallest greater equal same not no yes
which color colour shape so then answer reference solution given that uses see I read look first second
third next finally result therefore thus sees values value option options choose letter
A B C D E F G H How Which What colour colours
""".split()
PUNCTUATION = list("=+-*/,.:;?()")


def build_tokenizer(extra_words: list[str] | tuple[str, ...] = ()):
    """The compact offline tokenizer: 256 byte tokens + specials + whole words/phrases (deterministic).

    Byte-level BPE with no merges and `ignore_merges=True`: a pre-token (a word with its leading space, a
    number, a run of punctuation) that is in the vocabulary becomes one token; anything else falls back to
    its bytes, so every string round-trips.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    numbers = [str(n) for n in range(100)]
    for word in [*WORDS, *numbers, *PUNCTUATION, *extra_words]:
        for piece in (word, " " + word):
            # The vocab holds pre-tokens in byte-level form (" red" -> "Ġred").
            vocab.setdefault("".join(tok for tok, _ in byte_level.pre_tokenize_str(piece)), len(vocab))

    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None, ignore_merges=True))
    core.pre_tokenizer = byte_level
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    core.add_tokens([AddedToken(t, normalized=False) for t in [*TAG_TOKENS, *PROMPT_PHRASES]])

    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
    )
    tok.padding_side = "left"  # prompts are left-padded so responses start at the same column
    return tok


def build_image_processor(patch_size: int = 16, merge_size: int = 1, min_pixels: int = 32 * 32,
                          max_pixels: int = 128 * 128):
    """Qwen2-VL image processor (PIL backend: no torchvision needed) sized for tiny images.

    The real default upsamples every image to at least 256x256 (min_pixels); a small floor keeps a
    96x96 testbed image at 36 patches.
    """
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(
        patch_size=patch_size,
        temporal_patch_size=2,
        merge_size=merge_size,
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )


def build_processor(tokenizer=None, image_processor=None):
    """An image-only Qwen3-VL processor for the tiny model (defaults built offline)."""
    from rlsd.model import ImageOnlyQwen3VLProcessor

    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    image_processor = image_processor if image_processor is not None else build_image_processor()
    return ImageOnlyQwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                     chat_template=tokenizer.chat_template)


def tiny_config(tokenizer, hidden: int = 128, layers: int = 4, heads: int = 4, kv_heads: int = 2,
                vision_depth: int = 2, vision_hidden: int = 64, merge_size: int = 1, intermediate: int | None = None,
                vision_heads: int = 2, vision_intermediate: int | None = None, vocab_size: int | None = None,
                deepstack: tuple[int, ...] = (0,), vision_positions: int = 256):
    """A `Qwen3VLConfig` whose token ids match `tokenizer`: about 1M parameters by default.

    The keyword arguments also describe real Qwen3-VL shapes (see `rlsd.gpu_check.ARCHS`); `vocab_size` larger than
    the tokenizer pads the embedding like the real 151,936-entry vocabulary.
    """
    from transformers import Qwen3VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    head_dim = hidden // heads
    text = dict(
        vocab_size=max(vocab_size or 0, len(tokenizer)), hidden_size=hidden,
        intermediate_size=intermediate or 2 * hidden,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
        max_position_embeddings=4096, tie_word_embeddings=False, pad_token_id=ids[PAD_TOKEN],
        bos_token_id=None, eos_token_id=ids[EOS_TOKEN],
        # mrope sections split head_dim/2 rotary frequencies between time, height and width.
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                         "mrope_section": _mrope_section(head_dim), "mrope_interleaved": True},
    )
    vision = dict(
        depth=vision_depth, hidden_size=vision_hidden, intermediate_size=vision_intermediate or 2 * vision_hidden,
        num_heads=vision_heads, patch_size=16, temporal_patch_size=2, spatial_merge_size=merge_size,
        out_hidden_size=hidden, num_position_embeddings=vision_positions, deepstack_visual_indexes=list(deepstack),
    )
    return Qwen3VLConfig(
        text_config=text, vision_config=vision,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def _mrope_section(head_dim: int) -> list[int]:
    half = head_dim // 2
    hw = half // 4
    return [half - 2 * hw, hw, hw]


def build_tiny_model(tokenizer=None, seed: int = 0, device: str | None = None, dtype: torch.dtype | None = None,
                     **config_kwargs):
    """A randomly initialised tiny `Qwen3VLForConditionalGeneration`; same seed -> same weights.

    `device` builds it there directly (a 2B-shaped model initialises in seconds on a GPU, minutes on a CPU).
    """
    from transformers import Qwen3VLForConditionalGeneration

    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    config = tiny_config(tokenizer, **config_kwargs)
    torch.manual_seed(seed)
    with torch.device(device or "cpu"):
        model = Qwen3VLForConditionalGeneration(config)
    if dtype is not None:
        model.to(dtype)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    return model


def save_tiny(path: str | Path, seed: int = 0, **config_kwargs) -> Path:  # kwargs: build_tiny_model's
    """Build the tiny model + processor and save them as a regular HF model directory."""
    path = Path(path)
    processor = build_processor()
    merge = config_kwargs.get("merge_size", processor.image_processor.merge_size)
    if merge != processor.image_processor.merge_size:
        processor = build_processor(image_processor=build_image_processor(merge_size=merge))
    model = build_tiny_model(processor.tokenizer, seed=seed, **config_kwargs)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
