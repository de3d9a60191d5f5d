"""Models that come from MLflow rather than from training (issue 16): the weights of a logged
model (`runs:/<run>/student`, `models:/<name>/<version>`) for `teacher.checkpoint`, and the stored
weights a run's teacher or student ended with, for `kdexp-export`."""

from __future__ import annotations

import re

from kdexp.config.checks import ConfigError
from kdexp.tracking.connect import client, search_all
from kdexp.tracking.model_store import find_stored
from kdexp.tracking.reader import StoreError, read_client

STORE_KEY = re.compile(r"^[0-9a-f]{24}$")  # the model store's hex keys (kdexp/config/identity.py)


def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"


def model_version(uri: str, key: str) -> dict[str, str]:
    """What a model URI points at now: a registered model's name and version (an alias or
    `latest` resolved), so that a new version under the same URI is a new store entry; a
    `runs:/` URI and a logged model's `models:/<model id>` name fixed weights already."""
    if not uri.startswith("models:/"):
        return {}
    name, _, ref = uri.removeprefix("models:/").partition("/")
    try:
        mlflow_client = client()
        if "@" in name:
            name, alias = name.split("@", 1)
            version = mlflow_client.get_model_version_by_alias(name, alias).version
        elif ref.isdigit():
            version = mlflow_client.get_model_version(name, ref).version
        elif not ref:  # MLflow 3's logged models: models:/<model id>, immutable like a runs:/ URI
            return {"model_id": mlflow_client.get_logged_model(name).model_id}
        else:
            found = mlflow_client.search_model_versions(f"name = '{name}'")
            if not found:
                raise LookupError(f"no version of registered model {name!r}")
            version = max(int(v.version) for v in found)
    except Exception as err:  # noqa: BLE001 - MlflowException, a lost connection: the model is unreachable
        raise ConfigError(f"{key}={uri}: cannot reach that MLflow model ({_one_line(err)})") from None
    return {"model_name": name, "model_version": str(version)}


def load_model_state(uri: str, key: str) -> dict:
    """The state dict (on the CPU) of the torch model logged at `uri`."""
    try:
        import mlflow.pytorch

        model = mlflow.pytorch.load_model(uri, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - a bad URI, a missing run or artifact: all unreachable
        raise ConfigError(f"{key}={uri}: cannot load that MLflow model ({_one_line(err)}); allowed: "
                          f"runs:/<run id>/<model name>, models:/<name>/<version>, a .pt/.pth file") from None
    return {name: value.detach().cpu() for name, value in model.state_dict().items()}


def exported_state(ref: str, role: str, experiment: str | None = None,
                   tracking_uri: str | None = None) -> tuple[dict, str]:
    """(state dict, what it is) of `ref`: a model store key, a store entry's run id, or a run of
    kdexp whose `role` (teacher, student, teacher0, ...) is exported: a stored teacher through the
    run's `kdexp.<role>.lineage` tag, a student through the model the run logged. A run id is
    unique in its tracking store, so a run and its store entry are found by id in whatever
    experiment they are; `experiment` only narrows where a store key is looked for."""
    import mlflow

    try:
        mlflow_client, uri = read_client(tracking_uri)
    except StoreError as err:
        raise ConfigError(str(err)) from None
    mlflow.set_tracking_uri(uri)  # the store's artifacts are read through it
    if STORE_KEY.match(ref):
        return _stored(mlflow_client, ref, experiment)
    try:
        run = mlflow_client.get_run(ref)
    except Exception as err:  # noqa: BLE001
        raise ConfigError(f"{ref}: neither a store key nor a run id of this tracking store "
                          f"({_one_line(err)})") from None
    tags = run.data.tags
    if "kdexp.store_key" in tags:
        return _entry(mlflow_client, run)
    lineage = tags.get(f"kdexp.{role}.lineage")
    if lineage:
        return _entry(mlflow_client, mlflow_client.get_run(lineage))
    if f"{role}_model_uri" in tags:
        return load_model_state(tags[f"{role}_model_uri"], role), f"model {tags[f'{role}_model_uri']}"
    roles = sorted({t.split(".")[1] for t in tags if t.endswith(".lineage")} |
                   {t.removesuffix("_model_uri") for t in tags if t.endswith("_model_uri")})
    raise ConfigError(f"--role={role}: run {ref} has no stored or logged {role}; allowed: {', '.join(roles) or 'none'}")


def _entry(mlflow_client, run) -> tuple[dict, str]:
    """A store entry's model, looked up in the experiment the entry run is in."""
    store = mlflow_client.get_experiment(run.info.experiment_id).name
    return _found(find_stored(store, run.data.tags["kdexp.store_key"]), run.data.tags["kdexp.store_key"], [store])


def _stored(mlflow_client, key: str, experiment: str | None) -> tuple[dict, str]:
    """The entry of a store key: in `<experiment>-store`, else in every experiment that holds
    an entry of that key."""
    if experiment is not None:
        stores = [f"{experiment}-store"]
    else:
        ids = [e.experiment_id for e in mlflow_client.search_experiments()]
        runs = search_all(mlflow_client, ids, f"tags.`kdexp.store_key` = '{key}'") if ids else []
        stores = sorted({mlflow_client.get_experiment(r.info.experiment_id).name for r in runs})
    for store in stores:
        found = find_stored(store, key)
        if found is not None:
            return _found(found, key, stores)
    return _found(None, key, stores)


def _found(found, key: str, stores: list[str]) -> tuple[dict, str]:
    if found is None:
        where = f"experiment {', '.join(repr(s) for s in stores)}" if stores else "this tracking store"
        raise ConfigError(f"store key {key}: no usable entry in {where}")
    return found[1], f"store entry {found[0]} (key {key})"
