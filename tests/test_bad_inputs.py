"""Every bad input fails fast, in one line, with a non-zero exit, and harms nothing earlier.

A FINISHED run is made first in the same folder and store; after each bad command it must be
exactly as it was (status, metrics, artifacts) and no other run may have appeared in the store."""


import pytest
import torch

from conftest import FAST
from helpers import kdexp, snapshot

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("bad-inputs")
    result = kdexp([*FAST, "data.limit_train=300", "tracking.log_model=false"], cwd, timeout=600)
    assert result.returncode == 0, result.stderr
    (cwd / "afile").write_text("a file where a folder should be")
    (cwd / "notsqlite.db").write_text("not a database")
    raw = cwd / "corrupt" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"\x00\x00\x08\x03garbage")
    before = snapshot(cwd)
    assert len(before) == 1 and before[0][1] == "FINISHED"
    return cwd, before


BAD = [
    # (id, args, what the one line must name)
    ("temperature zero", ["loss.temperature=0"], "loss.temperature"),
    ("a model group without its role", ["model=cnn"],
     "model=cnn names no model: this config has 2 (teacher, student); choose model@teacher=cnn or model@student=cnn"),
    ("alpha above one", ["loss.alpha=1.5"], "loss.alpha"),
    ("unknown loss", ["loss=nonexistent"], "loss=nonexistent"),
    ("unknown model", ["model@student=transformer9000"], "model@student"),
    ("zero epochs", ["trainer.epochs=0"], "trainer.epochs"),
    ("zero batch size", ["data.batch_size=0"], "data.batch_size"),
    ("negative learning rate", ["optim.lr=-1"], "optim.lr"),
    ("misspelt key", ["+loss.temprature=3"], "loss.temprature"),
    ("wrong type", ["trainer.epochs=many"], "trainer.epochs"),
    ("bad seed", ["seed=abc"], "seed"),
    ("unknown re-run policy", ["trainer.rerun=maybe"], "trainer.rerun"),
    ("device not here", ["trainer.device=cuda"] if not torch.cuda.is_available() else ["trainer.device=tpu"],
     "trainer.device"),
    ("validation split too large", ["data.val_size=100000"], "data.val_size"),
    ("model does not fit the data", ["teacher.channels=[8,8,8,8,8,8]"], "teacher.channels"),
    ("data set missing offline", ["data=mnist", "data.root=nowhere"], "data.download=true"),
    ("corrupt data files", ["data=mnist", "data.root=corrupt"], "corrupt"),
    ("unwritable output folder", ["hydra.run.dir=afile/run"], "afile"),
    ("unwritable tracking location", ["tracking.uri=sqlite:///afile/mlflow.db"], "afile"),
    ("tracking file is not a store", ["tracking.uri=sqlite:///notsqlite.db"], "notsqlite.db"),
]


@pytest.mark.parametrize("args, needle", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input(folder, args, needle):
    cwd, before = folder
    result = kdexp([*FAST, *args], cwd, timeout=180)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kdexp: error:") and needle in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert snapshot(cwd) == before
    assert (cwd / "notsqlite.db").read_text() == "not a database"
