"""The CPU testbed, in one place: what the RL runs train and are tested on, and where their warm start comes from.

    rlsd.testbed.scenes        the problems: coloured-square images, five question families, splits, how a response
                               is read (its supported answer, its read-outs, a mention of the reference)
    rlsd.testbed.demonstrator  the careless demonstrator the warm start imitates, its answer-conditioned posterior
                               (the teacher format's targets) and the oracle teacher's exact evidence
    rlsd.testbed.sft           the warm start: the tiny Qwen3-VL trained on the demonstrator (`python -m rlsd sft`)
    rlsd.testbed.evaluation    the warm start's evaluation (both prompt formats, image controls, greedy, ideal
                               observer), the step-0 point of every run's curves

`from rlsd.testbed import X` gives the scenes' and the demonstrator's names (the light modules); the warm start's
training and evaluation import torch and the model code, so they are imported from their modules.
"""

from rlsd.testbed.demonstrator import (  # noqa: F401
    DELTA_CAP, careless_solution, MAX_REJECTION_TRIES, conditioned_solution, readout_distribution,
    answer_likelihood, oracle_delta)
from rlsd.testbed.scenes import (  # noqa: F401
    COLOURS, COLOUR_ORDER, COLOUR_NOISE, GRID, CELL, SQUARE, FAMILIES, PINNED_FAMILIES, DIFFICULTY_MAX,
    SPLIT_SEEDS, SPLIT_SIZES, LETTERS, MENTION_TEMPLATE, MENTION_PREFIX, Scene, sample_scene, readout,
    solution_text, make_problem, read_cells, ideal_observer_answer, content_key, generate_split, load_splits,
    supported_answer, wrong_answer, mentions_reference, needed_colours, readout_checks)
