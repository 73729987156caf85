"""Student and teacher prompts (chat messages), in the paper's format.

Student: the image(s), the question, and the format instruction.
Teacher (RLSD, as the paper prompts it): the same image(s) and question, then the reference FINAL ANSWER, an instruction
to understand it and solve the problem in its own way, and the same format instruction. The images go to both
prompts: the teacher forward must see the same pixels as the student.
"""

from __future__ import annotations

FORMAT_INSTRUCTION = (
    "Think step by step inside <thought></thought> tags, then give the final answer inside <answer></answer> tags."
)
REFERENCE_INTRO = "Here is a reference solution:"
REFERENCE_INSTRUCTION = "Understand the reference solution and solve the problem in your own way."

# Fixed phrases the tiny tokenizer encodes as single tokens (the real tokenizer encodes them as text).
PROMPT_PHRASES = (FORMAT_INSTRUCTION, REFERENCE_INTRO, REFERENCE_INSTRUCTION)


def _content(question: str, n_images: int, *texts: str) -> list[dict]:
    parts = [{"type": "image"} for _ in range(n_images)]
    parts.append({"type": "text", "text": "\n".join([question, *texts])})
    return parts


def student_messages(question: str, n_images: int = 1, format_instruction: bool = True) -> list[dict]:
    """Chat messages for the student (policy) prompt: no privileged information.

    `format_instruction=False` sends the bare question (used to time against peers whose prompts have none).
    """
    texts = (FORMAT_INSTRUCTION,) if format_instruction else ()
    return [{"role": "user", "content": _content(question, n_images, *texts)}]


def teacher_messages(question: str, reference: str, n_images: int = 1, format_instruction: bool = True) -> list[dict]:
    """Chat messages for the teacher prompt: the question plus the reference final answer."""
    if reference is None or str(reference).strip() == "":
        raise ValueError("teacher_messages: the reference answer is empty")
    reference_line = f"{REFERENCE_INTRO} {reference}"
    texts = (FORMAT_INSTRUCTION,) if format_instruction else ()
    return [{"role": "user", "content": _content(question, n_images, reference_line, REFERENCE_INSTRUCTION, *texts)}]
