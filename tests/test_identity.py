"""Run identity and store keys survive config keys added later (issue 11 §5): today's values pinned."""

import pytest
from omegaconf import OmegaConf

from conftest import compose_cfg
from kdexp.config import identity
from kdexp.run.context import supervised_key
from kdexp.config.identity import drop_added, run_key

# Computed with the tree before the kd/hint groups existed (commit 4ff9be2), on the composed
# config without the FAST overrides; device cpu.
PINNED_RUN_KEYS = {
    (): "10d0fe4e0ffc9b9f0cf75c5f",
    ("experiment=seed_article",): "d46008960b4b5a8f34690d26",
    ("loss=self",): "0288d416c2815128aa645d80",
    ("loss=multi_teacher",): "b13129febdd91157154a0a02",
    ("loss=online",): "a87d7322bc6d3162c913b03f",
}
# Issue 21 (one owner per setting) changed which settings enter a run key: the configs that compute
# what they computed before keep their keys. Computed with the tree before it (commit 7ea75b8).
PINNED_RUN_KEYS.update({
    # DKD's warm-up is now the recipe's fraction of trainer.epochs (2 of the default 20): the runs of
    # the earlier 20-epoch warm-up are those that set it, kd.warmup=20.
    ('kd=dkd', 'kd.warmup=20'): "6322e86edc5332c2f15b0f27",
    ('kd=dist',): "a304f3a86e1e834d9e475bb3",
    ('kd=ls',): "dfe73463ceec1572e202c472",
    ('kd=ctkd', 'kd.warmup=10'): "79ba411ebfadb8671428edc2",
    # FitNets' recipe revision 2 (the reference's ConvReg, the middle stage): other runs than the
    # revision-1 keys abe890bed65adbfa22d9dd76 and 1c9fe5922f6772072f8241c7 of the same settings.
    ('hint=fitnets',): "5604bb15455100e214c6581f",
    # AT's recipe revision 3 (every stage, paired from the first: RepDistiller's zip(feat_s[1:-1],
    # feat_t[1:-1])): revision 2 was d0411e206f49167d1a47e5dc (stages 0-2, the last pairs), revision 1
    # d91b817638c83f81cfee5ff1 (the last stage alone).
    ('hint=at', 'model@student=cnn'): "f3ea461db55b8746c3078aef",
    ('kd=dkd', 'kd.warmup=20', 'hint=fitnets'): "eb9b6dfc1e33fd0dbe1f4719",
    ('loss=self', 'loss.mode=born_again'): "e456fa1983c49f77eb312179",
    ('loss=self', 'loss.mode=born_again', 'kd=dkd', 'kd.warmup=20'): "a60eb958a7059fa7daf24688",
    ('loss=none',): "b64b92fc672d75f4f7b795f3",
    ('experiment=cifar100_resnet32x4_resnet8x4',): "c4571f77138f7191b0f5e7e8",
    ('experiment=born_again',): "e7d927ebd62abe7028db0d00",
    ('experiment=dml',): "f46d8c4eb1e3bee5e00f7d19",
    ('experiment=ensemble_teachers',): "bf3fcc5fee1720986d519b91",
    ('kd=dkd', 'kd.warmup=20', 'kd.temperature=2'): "4ae6bb8e77dc977324995f01",
})
# (teacher store key, baseline store key) of the standard family.
PINNED_STORE_KEYS = {
    (): ("7d22bb777b70a8f640c23826", "c48ea8e7969d3f434814acf3"),
    ("experiment=seed_article",): ("8a13c3f25db4f21dfb92d105", "c65e72ac860c719f498d3351"),
}


@pytest.mark.parametrize("overrides", list(PINNED_RUN_KEYS), ids=lambda o: " ".join(o) or "default")
def test_run_keys_are_those_of_before_the_upgrade(overrides):
    assert run_key(compose_cfg(list(overrides), fast=False), "cpu") == PINNED_RUN_KEYS[overrides]


@pytest.mark.parametrize("overrides", list(PINNED_STORE_KEYS), ids=lambda o: " ".join(o) or "default")
def test_teacher_and_baseline_store_keys_are_those_of_before(overrides):
    cfg = compose_cfg(list(overrides), fast=False)
    t = cfg.trainer
    teacher = supervised_key(cfg, cfg.teacher, "teacher", t.teacher_epochs, bool(cfg.data.augment or t.teacher_augment))
    baseline = supervised_key(cfg, cfg.student, "student", t.epochs, bool(cfg.data.augment))
    assert (teacher[0], baseline[0]) == PINNED_STORE_KEYS[overrides]


def test_methods_at_other_values_are_other_runs_but_never_other_teachers():
    base = compose_cfg([], fast=False)
    keys = {run_key(compose_cfg(o, fast=False), "cpu") for o in
            ([], ["kd=dkd"], ["kd=hinton", "kd.standardize=true"], ["hint=fitnets"])}
    assert len(keys) == 4
    t = base.trainer
    for o in (["kd=dkd"], ["hint=fitnets"]):
        cfg = compose_cfg(o, fast=False)
        assert supervised_key(cfg, cfg.teacher, "teacher", t.teacher_epochs, True) == \
            supervised_key(base, base.teacher, "teacher", t.teacher_epochs, True)


def test_any_key_added_later_at_its_default_keeps_every_identity(monkeypatch):
    """The rule, not just today's keys: a new key declared in ADDED (and in ADDED_IN_SECTIONS for
    a model/data/optim key) leaves run and store keys unchanged at its "as before" value."""
    cfg = compose_cfg([], fast=False)
    before_run = run_key(cfg, "cpu")
    before_store = supervised_key(cfg, cfg.teacher, "teacher", 15, True)[0]
    monkeypatch.setitem(identity.ADDED, "trainer.new_knob", 0)
    monkeypatch.setitem(identity.ADDED, "brand_new.section.flag", False)
    monkeypatch.setitem(identity.ADDED_IN_SECTIONS, "model", {**identity.ADDED_IN_SECTIONS["model"], "new_width": None})
    grown = OmegaConf.to_container(cfg)
    grown["trainer"]["new_knob"] = 0
    grown["brand_new"] = {"section": {"flag": False}}
    grown["teacher"]["new_width"] = None
    grown = OmegaConf.create(grown)
    assert run_key(grown, "cpu") == before_run
    assert supervised_key(grown, grown.teacher, "teacher", 15, True)[0] == before_store
    grown.trainer.new_knob = 1
    assert run_key(grown, "cpu") != before_run


def test_drop_added_removes_only_as_before_values_and_the_sections_left_empty():
    table = {"kd.name": "hinton", "kd.standardize": False, "hint.name": "none"}
    assert drop_added({"a": 1, "kd": {"name": "hinton", "standardize": False}, "hint": {"name": "none"}},
                      table) == {"a": 1}
    kept = {"kd": {"name": "dkd", "standardize": False}, "hint": {"name": "at"}}
    assert drop_added(kept, table) == {"kd": {"name": "dkd"}, "hint": {"name": "at"}}


def test_a_revised_recipe_is_another_run_and_leaves_every_other_key_alone(monkeypatch):
    from kdexp.config.registry import HINT_METHODS

    fitnets, at = compose_cfg(["hint=fitnets"], fast=False), compose_cfg(["hint=at", "model@student=cnn"], fast=False)
    before = run_key(fitnets, "cpu"), run_key(at, "cpu")
    monkeypatch.setattr(HINT_METHODS["fitnets"], "revision", HINT_METHODS["fitnets"].revision + 1)
    assert run_key(fitnets, "cpu") != before[0] and run_key(at, "cpu") == before[1]


def test_the_eval_batch_size_is_not_part_of_a_runs_identity():
    """It changes how fast a run evaluates, not what it computes: data=cifar100's 64 (issue 26) and
    any other value give the key the run had with the earlier default of 1000."""
    base = ["experiment=cifar100_resnet32x4_resnet8x4"]
    keys = {run_key(compose_cfg(base + [f"data.eval_batch_size={n}"], fast=False), "cpu") for n in (64, 1000, 7)}
    assert keys == {PINNED_RUN_KEYS[tuple(base)]}
