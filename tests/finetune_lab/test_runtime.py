"""finetune_lab.runtime: the one dtype decision (which precision for which card), checked on any machine."""

import pytest

from finetune_lab.config import ConfigError, TrainConfig
from finetune_lab.runtime import Gpu, choose_dtype, native_dtype

T4 = Gpu("Tesla T4", (7, 5), 15360, 15000)
V100 = Gpu("Tesla V100", (7, 0), 16384, 16000)
A100 = Gpu("NVIDIA A100", (8, 0), 40960, 40000)
H200 = Gpu("NVIDIA H200", (9, 0), 143771, 143000)


@pytest.mark.parametrize(
    "card,dtype", [(None, "float32"), (V100, "float16"), (T4, "float16"), (A100, "bfloat16"), (H200, "bfloat16")]
)
def test_auto_picks_the_cards_native_precision(card, dtype):
    assert native_dtype(card) == dtype
    assert choose_dtype("auto", card) == dtype


def test_a_t4_is_never_given_bf16_even_though_torch_says_it_is_supported():
    # torch.cuda.is_bf16_supported() answers True on a T4 (emulation); the decision reads the capability instead.
    assert not T4.native_bf16 and choose_dtype("auto", T4) == "float16"
    with pytest.raises(
        ConfigError, match=r"Tesla T4 \(compute capability 7.5\) has no native bfloat16.*--dtype float16"
    ):
        choose_dtype("bfloat16", T4)


@pytest.mark.parametrize("requested", ["bfloat16", "float16"])
def test_half_precision_on_a_cpu_is_refused_with_the_fix(requested):
    with pytest.raises(ConfigError, match=f"{requested} training needs a CUDA GPU.*--dtype auto"):
        choose_dtype(requested, None)


@pytest.mark.parametrize(
    "card,requested", [(None, "float32"), (H200, "float16"), (H200, "float32"), (T4, "float32"), (A100, "bfloat16")]
)
def test_overrides_the_card_can_run_are_kept(card, requested):
    assert choose_dtype(requested, card) == requested


def test_an_unknown_dtype_is_refused_by_the_config():
    with pytest.raises(ConfigError, match="dtype 'fp8' is not one of auto, bfloat16, float16, float32"):
        TrainConfig(dtype="fp8")


PROCESS_STATE = """
import json
from finetune_lab.runtime import processes
p = processes()
print(json.dumps([p.world_size, p.rank, p.local_rank, p.is_main]))
"""


@pytest.mark.parametrize(
    "env,expected",
    [({}, [1, 0, 0, True]), ({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}, [4, 3, 1, False])],
)
def test_the_process_state_comes_from_the_launchers_variables(env, expected):
    import json
    import os
    import subprocess
    import sys

    from helpers import REPO

    clean = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    done = subprocess.run(
        [sys.executable, "-c", PROCESS_STATE], cwd=REPO, env={**clean, **env}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == expected


def test_only_the_runtime_module_reads_the_runtime_variables():
    from helpers import REPO

    owned = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "FINETUNE_LAB_QUICK", "FINETUNE_LAB_CACHE")
    for path in sorted([*(REPO / "finetune_lab").glob("*.py"), *(REPO / "labs").rglob("*.py")]):
        if path.name == "runtime.py":
            continue
        text = path.read_text()
        read = [name for name in owned if f'"{name}"' in text]
        assert not read, f"{path.name} reads {read}: ask finetune_lab.runtime"
    models = (REPO / "finetune_lab" / "models.py").read_text()
    assert "set_device" not in models, "choosing a backend has no side effects"
