"""scripts/install_gpu.py: the Colab/GPU install never names torch, and picks xformers and torchao for the
running torch. scripts/check_gpu_install.py proves it against PyPI (it needs the network, so it is not run here)."""

import subprocess

import nbformat
import pytest
from install_gpu import NO_DEPS, REPO, WITH_DEPS, install_commands


@pytest.mark.parametrize(
    "torch_version,xformers,torchao",
    [
        ("2.10.0+cu128", "xformers==0.0.34", "torchao==0.16.0"),
        ("2.9.1", "xformers==0.0.33.post1", "torchao==0.16.0"),
        ("2.11.0+cu130", None, "torchao==0.17.0"),
    ],
)
def test_xformers_only_in_the_build_for_the_running_torch(torch_version, xformers, torchao):
    no_deps, with_deps, package = install_commands(torch_version)
    assert no_deps[:3] == ["--no-deps", "-r", str(NO_DEPS)] and torchao in no_deps
    assert (xformers in no_deps) if xformers else not any(a.startswith("xformers") for a in no_deps)
    assert with_deps == ["-r", str(WITH_DEPS)]
    assert package == ["--no-deps", str(REPO)]  # the lab's own package, last, without touching the others


def requirement_names(path):
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            names += requirement_names(path.parent / line[3:])
        elif line:
            names.append(line.split("=")[0].split(">")[0].split("<")[0].strip().lower())
    return names


def test_no_requirement_installed_on_a_gpu_names_torch_or_its_companions():
    names = requirement_names(NO_DEPS) + requirement_names(WITH_DEPS)
    assert "unsloth" in names and "transformers" in names
    assert not {"torch", "torchvision", "torchaudio", "triton", "xformers"} & set(names)


def test_every_notebook_installs_through_the_same_installer_on_colab():
    for path in sorted((REPO / "labs").rglob("*.ipynb")):
        setup = nbformat.read(path, as_version=4).cells[1].source
        assert '"google.colab" in sys.modules' in setup and '"scripts/install_gpu.py"' in setup, path.name


def test_make_takes_the_cpu_torch_from_an_index_only_when_asked():
    plain = subprocess.run(["make", "-n", "setup", "VENV=/nonexistent"], cwd=REPO, capture_output=True, text=True)
    assert "--index-url" not in plain.stdout
    cpu = subprocess.run(
        ["make", "-n", "setup", "VENV=/nonexistent", "TORCH_INDEX=https://example.org/whl/cpu"],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout
    assert "pip install --quiet --index-url https://example.org/whl/cpu torch==2.13.0" in cpu
    # the CPU torch goes in first, so requirements.txt finds its pin already met
    assert cpu.index("--index-url") < cpu.index("-r requirements.txt")
