import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny Qwen3-VL saved as a regular model directory (built offline, seed 0)."""
    from rlsd.tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture
def images():
    """Two images of different sizes (96x96 -> 36 patches, 64x96 -> 24 patches)."""
    return [Image.new("RGB", (96, 96), (220, 30, 30)), Image.new("RGB", (64, 96), (40, 70, 220))]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
