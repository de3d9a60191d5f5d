"""A missing data set is refused first: one line, before torch or MLflow is imported, nothing left
behind (issue 28: it took ~25 s and left a run folder)."""

import subprocess
import sys
from types import SimpleNamespace

import pytest

from helpers import kdexp, kdexp_env
from kdexp.data.expected import TORCHVISION_FILES, missing_data


def data(name, root, download=False):
    return SimpleNamespace(name=name, root=str(root), download=download)


@pytest.mark.parametrize("name", sorted(TORCHVISION_FILES))
def test_torchvision_sets_need_every_file_torchvision_reads(tmp_path, name):
    folder, files = TORCHVISION_FILES[name]
    assert "no usable files" in missing_data(data(name, tmp_path))
    for file in files[:-1]:
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / folder / file).write_bytes(b"x")
    problem = missing_data(data(name, tmp_path))
    assert f"missing {files[-1]})" in problem and "data.download=true" in problem
    (tmp_path / folder / files[-1]).write_bytes(b"x")
    assert missing_data(data(name, tmp_path)) is None
    assert missing_data(data(name, tmp_path / "elsewhere", download=True)) is None  # fetched later


def test_the_names_are_torchvisions(tmp_path):
    """The expected names are the ones torchvision's classes look for (not a copy that drifts)."""
    import torchvision.datasets as tvd

    assert tvd.MNIST.resources[0][0].endswith("train-images-idx3-ubyte.gz")
    assert {f for f, _ in tvd.CIFAR10.train_list + tvd.CIFAR10.test_list} <= set(TORCHVISION_FILES["cifar10"][1])
    assert {f for f, _ in tvd.CIFAR100.train_list + tvd.CIFAR100.test_list} <= set(TORCHVISION_FILES["cifar100"][1])
    assert tvd.CIFAR10.base_folder == TORCHVISION_FILES["cifar10"][0]


def test_image_folder_root_and_embedded_set(tmp_path):
    assert "not a folder" in missing_data(data("imagefolder", tmp_path / "nowhere"))
    assert missing_data(data("imagenet", tmp_path)) is None  # its layout is checked on reading
    assert missing_data(data("mnist5k", tmp_path / "nowhere")) is None  # ships with kdexp


REFUSE_IN_PROCESS = """
import sys
from kdexp.cli import main
sys.argv = ["kdexp", *sys.argv[1:]]
try:
    main.main()
except SystemExit as stop:
    print("exit", stop.code, "torch" in sys.modules, "mlflow" in sys.modules)
"""


@pytest.mark.parametrize("sweep", [[], ["-m", "loss.temperature=2,4"]], ids=["run", "sweep"])
def test_missing_data_is_refused_before_torch_and_leaves_nothing(tmp_path, sweep):
    args = [*sweep, "data=mnist", "data.root=nowhere"]
    result = subprocess.run([sys.executable, "-c", REFUSE_IN_PROCESS, *args], cwd=tmp_path,
                            env=kdexp_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert result.stdout.split()[-4:] == ["exit", "2", "False", "False"], result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "data.name=mnist: no usable files under" in lines[0], result.stderr
    assert list(tmp_path.iterdir()) == []  # no outputs/, no mlflow.db


def test_a_run_folder_with_more_than_hydras_files_is_kept(tmp_path):
    from pathlib import Path

    from kdexp.config.paths import remove_unused_run_folder

    run = tmp_path / "outputs" / "runs" / "day" / "time"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("a: 1")
    (run / "kdexp.log").write_text("")
    (run / "student.pt").write_bytes(b"weights")
    remove_unused_run_folder(run, tmp_path)
    assert (run / "student.pt").exists() and (run / ".hydra" / "config.yaml").exists()
    (run / "student.pt").unlink()
    (tmp_path / "outputs" / "runs" / "other").mkdir()
    remove_unused_run_folder(Path(run), tmp_path)
    assert not (tmp_path / "outputs" / "runs" / "day").exists() and (tmp_path / "outputs" / "runs" / "other").is_dir()


def test_the_cli_line_names_the_folder(tmp_path):
    result = kdexp(["data=cifar100", "data.root=data"], tmp_path, timeout=120)
    assert result.returncode == 2
    assert f"{tmp_path / 'data' / 'cifar-100-python'} (missing train, test, meta)" in result.stderr
