"""RLSD as a drop-in for TRL's `GRPOTrainer` (written against TRL 1.16.0), images included.

    from rlsd.integrations.trl import RLSDGRPOConfig, RLSDGRPOTrainer

    args = RLSDGRPOConfig(output_dir="out", rlsd_lam0=0.5, rlsd_decay_steps=50, ...)   # any GRPOConfig field too
    trainer = RLSDGRPOTrainer(model=..., reward_funcs=..., args=args, train_dataset=ds, peft_config=lora)

Everything GRPOTrainer does stays as it is (generation, rewards, its advantage A of each completion, the loss type,
vLLM, PEFT, logging). Added:

1. after TRL's generation and scoring, ONE no-grad forward of the same completions after the TEACHER prompt: the
   student prompt whose last user text goes through `rlsd_teacher_template` (default: the project's teacher prompt,
   `rlsd.prompts`, revealing the row's `rlsd_answer_column`), with TRL's own image tensors (`pixel_values`,
   `image_grid_thw`, ...: the same pixels as the student) and the teacher's weights (`rlsd_teacher`: a snapshot of
   the trainable weights re-synced every `rlsd_teacher_sync_steps` optimizer steps, or "base": the adapter disabled);
2. in the loss, A becomes RLSD's token advantage Â_t = A·((1-λ) + λ·clip(w_t, 1-ε, 1+ε)),
   w_t = (P_T(y_t)/P_S(y_t))^sign(A), from `rlsd.algorithm` (λ from `rlsd_lambda`). P_S comes from the loss's own
   forward (detached; TRL's `old_per_token_logps` where TRL computes them), so RLSD costs one extra forward;
3. metrics through TRL's logger: rlsd/lambda, rlsd/clip_low_frac, rlsd/clip_high_frac, rlsd/delta_abs_mean,
   rlsd/weight_mean, rlsd/teacher_s (seconds of the teacher pass).

Relies on TRL 1.16 internals, each marked "TRL 1.16" below. Not supported (raises at construction): tools and
environments (multi-turn tool calls: the teacher would need the tool turns), `use_liger_kernel` (its loss does not go
through `_compute_loss`).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer
from trl.data_utils import prepare_multimodal_messages
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import pad

from rlsd import algorithm as alg
from rlsd.prompts import REFERENCE_INSTRUCTION, REFERENCE_INTRO
from rlsd.teacher import TeacherWeights

TRL_VERSION = "1.16.0"  # the version this module is written and tested against (pyproject's `trl` extra pins it)

# The project's teacher prompt (`rlsd.prompts.teacher_messages` without the format instruction, which a TRL user's
# prompt already carries): the student's text, the reference final answer, the instruction to solve it anew.
DEFAULT_TEACHER_TEMPLATE = "{prompt}\n" + REFERENCE_INTRO + " {answer}\n" + REFERENCE_INSTRUCTION

# TRL 1.16: the keys of `_generate_and_score_completions`' output that `_get_per_token_logps_and_entropies` takes.
# These depend on the images alone, so the teacher forward reuses the student's tensors as they are ...
IMAGE_FIELDS = ("pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask", "spatial_shapes",
                "num_tiles", "image_sizes", "image_position_ids")
# ... while these follow the prompt's tokens, so they come from the teacher prompt's own tokenization.
TOKEN_FIELDS = ("token_type_ids", "mm_token_type_ids")

TEACHERS = {"snapshot": "snapshot", "base": "initial"}  # rlsd_teacher -> rlsd.teacher.TeacherWeights mode


@dataclass
class RLSDGRPOConfig(GRPOConfig):
    """`GRPOConfig` plus RLSD's settings (every GRPOConfig field works as in TRL)."""

    rlsd_lam0: float = 0.5
    """λ0: weight of the teacher's evidence in the token advantage, in [0, 1]. 0: exactly TRL's GRPO."""
    rlsd_decay_steps: int = 0
    """K: λ decays linearly from λ0 to 0 over K optimizer steps; 0: λ stays λ0 (the authors' convention). Once λ has
    reached 0 the teacher pass is skipped (plain GRPO)."""
    rlsd_clip_eps: float = 0.2
    """ε_w: the evidence weight w_t is clipped to [1-ε_w, 1+ε_w], in [0, 1)."""
    rlsd_teacher: str = "snapshot"
    """Teacher weights: "snapshot" (the trainable weights, re-synced every rlsd_teacher_sync_steps optimizer steps)
    or "base" (the model before training: with PEFT the adapter disabled, no copy)."""
    rlsd_teacher_sync_steps: int = 10
    """N: the snapshot teacher is re-synced to the policy after every N-th optimizer step."""
    rlsd_teacher_template: str = DEFAULT_TEACHER_TEMPLATE
    """Text of the teacher's last user turn: `{prompt}` is the student's text there, `{answer}` the reference."""
    rlsd_answer_column: str = "answer"
    """Dataset column holding each row's reference answer (what the teacher is shown)."""

    def __post_init__(self):
        super().__post_init__()

        def bad(name, why):
            raise ValueError(f"RLSDGRPOConfig.{name}: {why}")

        if not 0.0 <= self.rlsd_lam0 <= 1.0:
            bad("rlsd_lam0", f"must be in [0, 1], got {self.rlsd_lam0}")
        if self.rlsd_decay_steps < 0:
            bad("rlsd_decay_steps", f"must be >= 0 (0: constant λ), got {self.rlsd_decay_steps}")
        if not 0.0 <= self.rlsd_clip_eps < 1.0:
            bad("rlsd_clip_eps", f"must be in [0, 1), got {self.rlsd_clip_eps}")
        if self.rlsd_teacher not in TEACHERS:
            bad("rlsd_teacher", f"must be one of {sorted(TEACHERS)}, got {self.rlsd_teacher!r}")
        if self.rlsd_teacher_sync_steps < 1:
            bad("rlsd_teacher_sync_steps", f"must be >= 1, got {self.rlsd_teacher_sync_steps}")
        if "{answer}" not in self.rlsd_teacher_template:
            bad("rlsd_teacher_template", "must contain {answer} (the teacher has to see the reference)")
        try:
            self.rlsd_teacher_template.format(prompt="", answer="")
        except (KeyError, IndexError, ValueError) as e:
            bad("rlsd_teacher_template", f"only {{prompt}} and {{answer}} may be used ({type(e).__name__}: {e})")


def token_fields_with_completion(fields_BP: dict, completion_ids_BT: torch.Tensor) -> dict:
    """TRL 1.16's per-token type fields (`TOKEN_FIELDS`, one (B, P) tensor each) over prompt + completion: the
    prompt's values, then zeros on the completion's tokens, as TRL's loss forward lays them out."""
    return {k: torch.cat([v_BP, v_BP.new_zeros(completion_ids_BT.shape)], dim=1) for k, v_BP in fields_BP.items()}


def teacher_prompt(prompt, answer: str, template: str = DEFAULT_TEACHER_TEMPLATE):
    """The teacher's version of one TRL prompt: the text of its last user turn becomes
    `template.format(prompt=text, answer=answer)`; image parts and other turns are kept. A plain-text
    (non-conversational) prompt is formatted whole."""
    if isinstance(prompt, str):
        return template.format(prompt=prompt, answer=answer)
    messages = copy.deepcopy(prompt)
    user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    if user is None:
        raise ValueError("RLSD teacher prompt: the prompt has no user message to add the reference answer to")
    if isinstance(user["content"], str):
        user["content"] = template.format(prompt=user["content"], answer=answer)
        return messages
    texts = [part for part in user["content"] if part.get("type") == "text"]
    if texts:
        texts[-1]["text"] = template.format(prompt=texts[-1]["text"], answer=answer)
    else:
        user["content"].append({"type": "text", "text": template.format(prompt="", answer=answer)})
    return messages


class _TeacherSync(TrainerCallback):
    """Refreshes the RLSD teacher after each optimizer step (`TeacherWeights.after_optimizer_step`)."""

    def __init__(self, teacher: TeacherWeights):
        self.teacher = teacher

    def on_step_end(self, args, state, control, **kwargs):
        self.teacher.after_optimizer_step(state.global_step)  # global_step: optimizer steps done


class RLSDGRPOTrainer(GRPOTrainer):
    """TRL's `GRPOTrainer` with RLSD's token advantages (see the module docstring). Takes an `RLSDGRPOConfig`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, RLSDGRPOConfig):
            raise TypeError(f"RLSDGRPOTrainer needs args=RLSDGRPOConfig(...), got {type(self.args).__name__}")
        if self.tools or self.environment_factories is not None:
            raise ValueError("RLSDGRPOTrainer: tools / environment_factory (multi-turn tool calls) are not supported")
        if self.args.use_liger_kernel:
            raise ValueError("RLSDGRPOTrainer: use_liger_kernel is not supported (its loss bypasses _compute_loss)")
        self.rlsd_teacher = TeacherWeights(self.accelerator.unwrap_model(self.model), TEACHERS[self.args.rlsd_teacher],
                                           sync_every=self.args.rlsd_teacher_sync_steps)
        self.add_callback(_TeacherSync(self.rlsd_teacher))
        self._rlsd_loss_inputs = None  # set only inside _compute_loss, until its first log-prob forward

    # ------------------------------------------------------------------------------------------ teacher pass

    def _rlsd_teacher_prompts(self, inputs: list[dict]) -> list:
        """Each row's teacher prompt, with its images attached the way TRL attaches the student's."""
        column, prompts = self.args.rlsd_answer_column, []
        for i, row in enumerate(inputs):
            answer = row.get(column)
            if answer is None or str(answer).strip() == "":
                raise ValueError(f"RLSD teacher: batch row {i} has no reference answer in column {column!r} "
                                 f"(RLSDGRPOConfig.rlsd_answer_column)")
            prompts.append(teacher_prompt(row["prompt"], str(answer), self.args.rlsd_teacher_template))
        # TRL 1.16 (_generate_and_score_completions): images come from an "images" or an "image" column and are put
        # into the conversation by prepare_multimodal_messages.
        if "images" in inputs[0]:
            images = [row.get("images") for row in inputs]
        elif "image" in inputs[0]:
            images = [[row["image"]] if row.get("image") is not None else None for row in inputs]
        else:
            images = None
        if images is not None and not all(im == [] for im in images):
            prompts = [prepare_multimodal_messages(p, images=im) for p, im in zip(prompts, images, strict=True)]
        return prompts

    def _rlsd_teacher_tokens(self, prompts: list, output: dict) -> tuple[list, dict]:
        """The teacher prompts' token ids (one list per row) and per-token fields, as TRL's `_tokenize_prompts`
        returns them, but without running the image processor again where the processor can expand its image
        placeholders from TRL's image tensors (the Qwen-VL family: `replace_image_token` reads `image_grid_thw`).

        The teacher's images are the student's, so each placeholder expands to the student's count; only the text
        differs. Render the chat template, expand the placeholders, tokenize: what the processor itself does after
        its image step (transformers 5.20, `ProcessorMixin.__call__`). Any other processor: TRL's own path."""
        processor = self.processing_class
        image_inputs = {k: output[k] for k in IMAGE_FIELDS if k in output}
        n_images = sum(part.get("type") == "image" for p in prompts if not isinstance(p, str)
                       for m in p if isinstance(m.get("content"), list) for part in m["content"])
        fast = (n_images > 0 and "image_grid_thw" in image_inputs and getattr(processor, "image_token", None)
                and hasattr(processor, "replace_image_token") and hasattr(processor, "get_text_with_replacements"))
        if not fast:
            prompt_ids, _, fields = self._tokenize_prompts(prompts)
            return prompt_ids, fields
        texts = processor.apply_chat_template(conversation=prompts, chat_template=self.chat_template,
                                              add_generation_prompt=True, tokenize=False, **self.chat_template_kwargs)
        replacements = [processor.replace_image_token(image_inputs, image_idx=i) for i in range(n_images)]
        texts, _ = processor.get_text_with_replacements(list(texts), replacements)
        bos = processor.tokenizer.bos_token  # as transformers' apply_chat_template: a template that writes BOS
        encoded = processor(text=texts, add_special_tokens=not (bos and texts[0].startswith(bos)))
        return encoded["input_ids"], {k: v for k, v in encoded.items() if k in TOKEN_FIELDS}

    @torch.no_grad()
    def _rlsd_teacher_logps(self, inputs: list[dict], output: dict) -> torch.Tensor:
        """log P_T(y_t) of the batch's completions after the teacher prompts, (B, T): one no-grad forward with the
        teacher's weights and the student's image tensors from TRL's `output`."""
        device = self.accelerator.device
        prompt_ids, fields = self._rlsd_teacher_tokens(self._rlsd_teacher_prompts(inputs), output)
        prompt_ids_BP = pad([torch.as_tensor(ids) for ids in prompt_ids], self._tokenizer.pad_token_id, "left",
                            self.pad_to_multiple_of).to(device)
        prompt_mask_BP = pad([torch.ones(len(ids), dtype=torch.long) for ids in prompt_ids], 0, "left",
                             self.pad_to_multiple_of).to(device)
        completion_ids_BT, completion_mask_BT = output["completion_ids"], output["completion_mask"]
        image_token_id = getattr(self.processing_class, "image_token_id", None)
        if image_token_id is not None and "image_grid_thw" in output:  # the same images: the same image tokens
            teacher_B, student_B = ((ids == image_token_id).sum(1) for ids in (prompt_ids_BP, output["prompt_ids"]))
            if not torch.equal(teacher_B, student_B):
                raise RuntimeError(f"RLSD teacher: image tokens per row {teacher_B.tolist()} differ from the "
                                   f"student's {student_B.tolist()} (the teacher must see the student's images)")
        model_kwargs = {k: output[k] for k in IMAGE_FIELDS if k in output}  # the SAME pixels as the student's
        types_BP = {k: pad([torch.as_tensor(t) for t in fields[k]], 0, "left", self.pad_to_multiple_of).to(device)
                    for k in TOKEN_FIELDS if k in output}
        model_kwargs.update(token_fields_with_completion(types_BP, completion_ids_BT))
        mode = "train" if self.model.training else "eval"
        batch_size = self.args.per_device_train_batch_size if mode == "train" else self.args.per_device_eval_batch_size
        with self.rlsd_teacher.active(), disable_gradient_checkpointing(self.model,
                                                                        self.args.gradient_checkpointing_kwargs):
            logp_BT, _, _ = self._get_per_token_logps_and_entropies(
                self.model, torch.cat([prompt_ids_BP, completion_ids_BT], dim=1),
                torch.cat([prompt_mask_BP, completion_mask_BT], dim=1), completion_ids_BT.size(1),
                batch_size=batch_size, **model_kwargs)
        return logp_BT

    def _rlsd_done(self) -> bool:
        """λ has decayed to 0 for good (decay_steps > 0 and past it): RLSD is plain GRPO from here on."""
        return 0 < self.args.rlsd_decay_steps <= self.state.global_step

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if not self._rlsd_done():
            t0 = time.perf_counter()
            # TRL 1.16: extra (B, ...) tensors in this dict are shuffled and split with the rest of the batch.
            output["rlsd_teacher_logps"] = self._rlsd_teacher_logps(inputs, output)
            self._metrics["train" if self.model.training else "eval"]["rlsd/teacher_s"].append(time.perf_counter() - t0)
        return output

    # ------------------------------------------------------------------------------------------ loss

    def _compute_loss(self, model, inputs):
        if "rlsd_teacher_logps" not in inputs:  # λ = 0 for good: TRL's loss on its own advantages
            return super()._compute_loss(model, inputs)
        # TRL 1.16: _compute_loss runs the student's log-prob forward first and reads inputs["advantages"] only after
        # it; our _get_per_token_logps_and_entropies swaps in the token advantages in between, from that forward's own
        # (detached) log-probs. A copy: TRL's buffered batch keeps the sequence advantages for its next iterations.
        self._rlsd_loss_inputs = inputs = dict(inputs)
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self._rlsd_loss_inputs = None

    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        logp_BT, entropy_BT, aux_loss = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        inputs, self._rlsd_loss_inputs = self._rlsd_loss_inputs, None
        if inputs is not None:  # the first forward inside _compute_loss: the student's
            student_logp_BT = inputs.get("old_per_token_logps")
            student_logp_BT = logp_BT.detach() if student_logp_BT is None else student_logp_BT
            inputs["advantages"] = self._rlsd_token_advantages(inputs, student_logp_BT)
        return logp_BT, entropy_BT, aux_loss

    def _rlsd_token_advantages(self, inputs: dict, student_logp_BT: torch.Tensor) -> torch.Tensor:
        """RLSD's (B, T) token advantages from TRL's sequence advantages (B,), and the metrics."""
        adv_B, teacher_logp_BT = inputs["advantages"], inputs["rlsd_teacher_logps"]
        mask_BT = inputs["completion_mask"]
        lam = alg.rlsd_lambda(self.state.global_step, self.args.rlsd_lam0, self.args.rlsd_decay_steps)
        eps = self.args.rlsd_clip_eps
        adv_BT = alg.rlsd_token_advantages(adv_B, teacher_logp_BT, student_logp_BT, mask_BT, lam, eps)
        _, _, stats = alg.rlsd_token_weights(adv_B, teacher_logp_BT, student_logp_BT, mask_BT, eps)
        metrics = self._metrics["train" if self.model.training else "eval"]
        metrics["rlsd/lambda"].append(lam)
        metrics["rlsd/clip_low_frac"].append(stats["weight_clip_low_frac"])
        metrics["rlsd/clip_high_frac"].append(stats["weight_clip_high_frac"])
        metrics["rlsd/weight_mean"].append(stats["weight_mean"])
        metrics["rlsd/delta_abs_mean"].append(float(alg.masked_mean((teacher_logp_BT - student_logp_BT).abs(),
                                                                    mask_BT)))
        inputs["rlsd_student_logps"] = student_logp_BT  # kept on the loss's inputs for inspection (tests)
        return adv_BT.to(adv_B.dtype)
