"""Which stages a feature method pairs by default (kdexp/distill/methods/hint_layers.py `paired`), pinned
to the references on the benchmark's architectures:

- every stage, not three: VGG, MobileNetV2 and ResNet-50 have four (RepDistiller's `feat[1:-1]`,
  mdistiller's `feats[1:]` / `preact_feats[1:]`), so VGG13 → MobileNetV2 sums AT over four pairs;
- different stage counts (VGG13's four → a CIFAR ResNet's three): RepDistiller's AT, NST, KDSVD, VID,
  AB and FSP `zip` the lists, keeping the first pairs; mdistiller's OFD (`_align_list`,
  `l[-min_len:]`) and ReviewKD (fusion built from the deepest level) keep the last;
- VGG's pre-ReLU stage output is the input of its stage's own ReLU (RepDistiller's `f{k}_pre`).

A changed default changes what a config computes, so each such method's recipe `revision` is above 1
(its runs of the earlier pairing keep their own run keys)."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from kdexp.config.identity import recipe_revisions
from kdexp.config.registry import HINT_METHODS
from kdexp.distill.features import Capture
from kdexp.distill.methods.hint_layers import paired
from kdexp.distill.methods.ofd import bn_before
from kdexp.models.factory import build

VGG13 = {"name": "vgg", "depth": 13}
MOBILENETV2 = {"name": "mobilenetv2", "expansion": 6, "width": 0.5}
RESNET8X4 = {"name": "resnet", "depth": 8, "widths": [32, 64, 128, 256], "dropout": 0.0}

FOUR = [f"stages.{k}" for k in range(4)]
VGG_PREACT = [f"stages.{k}.relu:input" for k in range(4)]
RESNET_PREACT = [f"stages.{k}.0.relu:input" for k in range(3)]


@pytest.fixture(scope="module")
def models():
    build_ = lambda spec, seed: build(OmegaConf.create(spec), (3, 32, 32), 100, seed)  # noqa: E731
    return {"vgg13": build_(VGG13, 0), "mobilenetv2": build_(MOBILENETV2, 1), "resnet8x4": build_(RESNET8X4, 2)}


def _resolved(name: str, student, teacher):
    method = HINT_METHODS[name](OmegaConf.structured(HINT_METHODS[name].schema()), None)
    method.resolve(student, teacher)
    return method.student_layers(), method.teacher_layers()


def test_paired_keeps_the_first_pairs_as_zip_or_the_last():
    s, t = ["s0", "s1", "s2"], ["t0", "t1", "t2", "t3"]
    assert paired(s, t) == (["s0", "s1", "s2"], ["t0", "t1", "t2"]) == tuple(map(list, zip(*zip(s, t))))
    assert paired(s, t, last=True) == (["s0", "s1", "s2"], ["t1", "t2", "t3"])
    assert paired(t, s) == (["t0", "t1", "t2"], ["s0", "s1", "s2"])


@pytest.mark.parametrize("method", ["at", "nst", "vid"])
def test_vgg13_to_mobilenetv2_pairs_all_four_stages(models, method):
    assert _resolved(method, models["mobilenetv2"], models["vgg13"]) == (FOUR, FOUR)


def test_pre_relu_methods_take_four_stages_and_vgg_pre_relu_outputs(models):
    student, teacher = models["mobilenetv2"], models["vgg13"]
    # MobileNetV2's blocks end in a linear bottleneck: its stage outputs are already pre-activation.
    assert _resolved("ab", student, teacher) == (FOUR, VGG_PREACT)
    assert _resolved("ofd", student, teacher) == (FOUR, VGG_PREACT)
    # (MobileNetV2's classifier follows its 1x1 conv to 1280, pooling and flattening: head.5.)
    assert _resolved("reviewkd", student, teacher) == (FOUR + ["head.5:input"], VGG_PREACT + ["head.2:input"])
    # OFD's margin comes from the batch norm before that ReLU: the last one of the stage's convs.
    assert bn_before(teacher, "stages.3.relu:input") is teacher.stages[3].convs[-1]
    with Capture(teacher, ["stages.3.relu:input"]) as c:
        teacher.eval()(torch.randn(2, 3, 32, 32))
    assert (c.features["stages.3.relu:input"] < 0).any()  # before the ReLU: its negative part too


@pytest.mark.parametrize("method", ["at", "nst", "kdsvd", "vid"])
def test_four_teacher_stages_to_three_student_stages_keep_the_first_pairs(models, method):
    assert _resolved(method, models["resnet8x4"], models["vgg13"]) == (FOUR[:3], FOUR[:3])


def test_fsp_and_ab_keep_the_first_pairs_ofd_and_reviewkd_the_last(models):
    student, teacher = models["resnet8x4"], models["vgg13"]
    assert _resolved("fsp", student, teacher) == (["stem"] + FOUR[:3], ["stem"] + FOUR[:3])
    assert _resolved("ab", student, teacher) == (RESNET_PREACT, VGG_PREACT[:3])
    assert _resolved("ofd", student, teacher) == (RESNET_PREACT, VGG_PREACT[1:])
    assert _resolved("reviewkd", student, teacher) == (FOUR[:3] + ["head.2:input"], VGG_PREACT[1:] + ["head.2:input"])


def test_the_pairs_are_those_of_the_references_zip_on_real_features(models):
    """AT on VGG13 → ResNet8x4 sums the same (student, teacher) feature shapes as RepDistiller's
    `zip(feat_s[1:-1], feat_t[1:-1])`, with feat[1:-1] = the stage outputs (f1..f4, f1..f3)."""
    student, teacher = models["resnet8x4"], models["vgg13"]
    x = torch.randn(2, 3, 32, 32)
    s_names, t_names = _resolved("at", student, teacher)
    with Capture(student, FOUR[:3]) as cs, Capture(teacher, FOUR) as ct:
        student(x), teacher(x)
        feat_s = [cs.features[n] for n in FOUR[:3]]
        feat_t = [ct.features[n] for n in FOUR]
        reference = [(f_s.shape, f_t.shape) for f_s, f_t in zip(feat_s, feat_t)]
        ours = [(cs.features[s].shape, ct.features[t].shape) for s, t in zip(s_names, t_names)]
    assert ours == reference and reference[0] == (torch.Size([2, 64, 32, 32]), torch.Size([2, 128, 16, 16]))


@pytest.mark.parametrize("method, revision", [("at", 3), ("nst", 2), ("kdsvd", 2), ("vid", 2), ("ab", 3),
                                              ("fsp", 2), ("ofd", 3), ("reviewkd", 3)])
def test_a_method_whose_pairing_changed_has_a_new_recipe_revision(method, revision):
    assert recipe_revisions(OmegaConf.create({"hint": {"name": method}})) == {"hint": revision}


# --- pre-ReLU features where a stage does not end in its block's `relu` -------------------------------

CNN = {"name": "cnn", "channels": [32, 64], "fc": 128, "dropout": 0.3, "batch_norm": True}
WRN16_2 = {"name": "wrn", "depth": 16, "widen": 2}
WRN_PREACT = ["stages.1.0.relu1:input", "stages.2.0.relu1:input", "head.1:input"]


def test_a_cnn_blocks_pre_relu_feature_is_its_relus_input_before_the_pooling():
    """conv → BN → ReLU → max-pool: the pre-ReLU map is the BN's output, at the conv's size; OFD
    takes it (and its margin from that BN) by default instead of refusing the cnn teacher."""
    cnn = build(OmegaConf.create(CNN), (1, 28, 28), 10, 0)
    preact = ["stages.0.2:input", "stages.1.2:input"]
    assert _resolved("ofd", cnn, cnn) == (preact, preact)
    assert _resolved("ab", cnn, cnn) == (preact, preact)
    assert [bn_before(cnn, name) for name in preact] == [cnn.stages[0][1], cnn.stages[1][1]]
    x = torch.randn(4, 1, 28, 28)
    with Capture(cnn, preact) as c:
        cnn.eval()(x)
        assert torch.equal(c.features["stages.0.2:input"], cnn.stages[0][1](cnn.stages[0][0](x)))
        assert c.features["stages.0.2:input"].shape[-1] == 28 and (c.features["stages.0.2:input"] < 0).any()


def test_a_cnn_without_batch_norm_is_refused_by_ofd_in_one_line_naming_the_setting():
    from kdexp.config.checks import ConfigError

    cnn = build(OmegaConf.create({**CNN, "batch_norm": False}), (1, 28, 28), 10, 0)
    with pytest.raises(ConfigError, match=r"no batch norm .*teacher\.batch_norm=true"):
        _resolved("ofd", cnn, cnn)


def test_a_wrns_pre_relu_features_are_the_next_batch_norms_outputs_as_the_references_preact():
    """RepDistiller's wrn.py with preact=True: f1 = block2.layer[0].bn1(f1), f2 = block3.layer[0].bn1(f2),
    f3 = bn1(f3); OFD's margins from the same batch norms (`get_bn_before_relu`)."""
    wrn = build(OmegaConf.create(WRN16_2), (3, 32, 32), 100, 0)
    assert _resolved("ofd", wrn, wrn) == (WRN_PREACT, WRN_PREACT)
    assert [bn_before(wrn, n) for n in WRN_PREACT] == [wrn.stages[1][0].bn1, wrn.stages[2][0].bn1, wrn.head[0]]
    for bn in (wrn.stages[1][0].bn1, wrn.stages[2][0].bn1, wrn.head[0]):  # a trained net's statistics
        bn.running_mean.normal_(), bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 32, 32)
    with Capture(wrn, WRN_PREACT + ["stages.0", "stages.1", "stages.2"]) as c:
        wrn.eval()(x)
        f = c.features
        assert torch.allclose(f[WRN_PREACT[0]], wrn.stages[1][0].bn1(f["stages.0"]))
        assert torch.allclose(f[WRN_PREACT[1]], wrn.stages[2][0].bn1(f["stages.1"]))
        assert torch.allclose(f[WRN_PREACT[2]], wrn.head[0](f["stages.2"]))


def test_ofd_names_the_teachers_own_pre_relu_layers_when_one_given_is_not_one():
    from kdexp.config.checks import ConfigError

    wrn = build(OmegaConf.create(WRN16_2), (3, 32, 32), 100, 0)
    with pytest.raises(ConfigError, match=r"hint\.teacher='stages\.0'.*this teacher's: stages\.1\.0\.relu1:input, "
                                          r"stages\.2\.0\.relu1:input, head\.1:input"):
        bn_before(wrn, "stages.0")
