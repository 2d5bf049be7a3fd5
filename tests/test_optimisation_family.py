"""The optimisation family: fine-tuning and first-order MAML, as heads and through the engine."""
import pytest
import torch
import torch.nn.functional as F

from fsslib.engine.episodic import load_run, train_fewshot
from fsslib.engine.protocol import EvalProtocol, evaluate
from fsslib.engine.statistics import per_seed
from fsslib.engine.trainer import TrainConfig
from fsslib.experiments.ablation import Variant, train_config
from fsslib.experiments.configs import experiment
from fsslib.experiments.profiles import PROFILES
from fsslib.models import build_model
from fsslib.models.finetune import RECORD as FINETUNE
from fsslib.models.finetune import FineTune, FineTuneConfig, gradient_steps, linear_logits, support_loss
from fsslib.models.fomaml import FOMAML, FOMAMLConfig, head_logits
from fsslib.models.fomaml import RECORD as FOMAML_RECORD


def episode(shot=1, channels=4, size=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    masks = (torch.rand(1, shot, size * 2, size * 2, generator=g) < 0.4).long()
    masks[..., 0, 0] = 255  # a void pixel, ignored by the loss
    return (torch.randn(1, channels, size, size, generator=g), torch.randn(1, shot, channels, size, size, generator=g),
            masks)


def hand_gradient(w, b, x, y):
    """Gradient of the mean pixel cross-entropy of a linear 2-way classifier on upsampled logits,
    by the chain rule written out: dL/dz = (softmax - onehot) / N, then through the bilinear map."""
    z = torch.einsum("jc,kchw->kjhw", w, x) + b[None, :, None, None]
    z = z.detach().requires_grad_(True)  # only the upsampling is differentiated by autograd here
    up = F.interpolate(z, size=y.shape[-2:], mode="bilinear", align_corners=False)
    valid = y != 255
    p = up.softmax(dim=1)
    onehot = F.one_hot(y.clamp(max=1), 2).permute(0, 3, 1, 2).float()
    d_up = (p - onehot) * valid[:, None] / valid.sum()
    (d_z,) = torch.autograd.grad(up, z, d_up)  # the transpose of the bilinear map
    return torch.einsum("kjhw,kchw->jc", d_z, x), d_z.sum(dim=(0, 2, 3))


def test_gradient_steps_match_a_hand_computation_on_a_linear_head():
    _, support, masks = episode()
    x, y = support[0], masks[0]
    w, b = torch.randn(2, 4), torch.randn(2)
    iterates = gradient_steps({"weight": w, "bias": b}, lambda p: support_loss(linear_logits(p, x), y), 3, 0.5)
    for _ in range(3):
        gw, gb = hand_gradient(w, b, x, y)
        w, b = w - 0.5 * gw, b - 0.5 * gb
    torch.testing.assert_close(iterates[-1]["weight"], w)
    torch.testing.assert_close(iterates[-1]["bias"], b)


def test_finetune_adapts_and_lowers_the_support_loss():
    model = FineTune(FineTuneConfig(steps=20, lr=1.0)).eval()  # random features: a step size for their scale
    query, support, masks = episode(channels=model.backbone.out_channels["layer4"])
    with torch.no_grad():  # evaluation adapts under no_grad too
        out = model.head({"layer4": query}, {"layer4": support}, masks, 1, (12, 12))
    before, after = out["support_loss"][0]
    assert after < before and out["logits"].shape == (1, 2, 12, 12)


def test_fomaml_inner_loop_moves_the_weights_and_the_outer_gradient_is_first_order():
    torch.manual_seed(0)
    model = FOMAML(FOMAMLConfig(width=0, inner_steps=2, inner_lr=0.5))
    channels = model.backbone.out_channels["layer4"]
    query, support, masks = episode(channels=channels)
    query_mask = (torch.rand(1, 12, 12) < 0.5).long()
    out = model.head({"layer4": query}, {"layer4": support}, masks, 1, (12, 12))
    F.cross_entropy(out["logits"], query_mask).backward()

    theta = {"weight": model.classifier.weight.detach()[:, :, 0, 0], "bias": model.classifier.bias.detach()}
    xs, xq = F.normalize(support[0], dim=1), F.normalize(query, dim=1)
    w, b = theta["weight"], theta["bias"]
    for _ in range(2):
        gw, gb = hand_gradient(w, b, xs, masks[0])
        w, b = w - 0.5 * gw, b - 0.5 * gb
    assert not torch.allclose(w, theta["weight"])  # the inner loop adapted the weights
    # First order: the meta-gradient is the query loss's gradient at the adapted weights.
    gw, gb = hand_gradient(w, b, xq, query_mask)
    torch.testing.assert_close(model.classifier.weight.grad[:, :, 0, 0], gw)
    torch.testing.assert_close(model.classifier.bias.grad, gb)


def test_anil_adapts_the_last_layer_only():
    model = FOMAML(FOMAMLConfig(width=8, anil=True))
    assert model.adapted_names() == ("classifier.weight", "classifier.bias")
    assert set(model.initialisation()) == {"hidden.weight", "hidden.bias", "classifier.weight", "classifier.bias"}
    params = {k: v.detach() for k, v in model.initialisation().items()}
    assert head_logits(params, torch.randn(2, model.backbone.out_channels["layer4"], 5, 5)).shape == (2, 2, 5, 5)


def test_both_are_registered_methods_of_the_optimisation_family():
    assert isinstance(build_model(FINETUNE.name), FineTune) and isinstance(build_model(FOMAML_RECORD.name), FOMAML)
    assert FINETUNE.family == FOMAML_RECORD.family == "optimisation"
    with pytest.raises(ValueError, match="inner_step"):
        build_model(FOMAML_RECORD.name, inner_step=3)  # a misspelt field is named


@pytest.mark.parametrize("profile", ["fast", "default", "full"])
def test_fine_tuning_never_trains_on_episodes_whatever_the_profile(profile, monkeypatch, tmp_path):
    monkeypatch.setenv("FSSLIB_RUNS", str(tmp_path / "runs"))
    monkeypatch.setattr("fsslib.experiments.configs.pretrained_backbone", lambda fold, seed: tmp_path / "backbone.pt")
    if profile == "fast":
        monkeypatch.setenv("FSSLIB_FAST", "1")
    config = train_config(Variant("ft", FINETUNE.name), 0, 0, recipe_args=PROFILES[profile].recipe)
    assert config.steps == 0 and config.model_args["frozen_stages"] == "all"
    assert experiment(FINETUNE.name).steps == 0
    fomaml = train_config(Variant("maml", FOMAML_RECORD.name), 0, 0, recipe_args=PROFILES[profile].recipe)
    assert fomaml.steps > 0


def test_a_run_of_zero_steps_stores_the_initial_weights_and_loads(synthetic_source, tmp_path, single_thread):
    config = TrainConfig(model=FINETUNE.name, steps=0, batch_size=2, image_size=64, seed=3)
    model = train_fewshot(config, tmp_path / "run", progress=False, source=synthetic_source)
    assert (tmp_path / "run" / "model.pt").exists() and not (tmp_path / "run" / "log.csv").exists()
    loaded, stored = load_run(tmp_path / "run")
    assert stored == config
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("method", [FINETUNE.name, FOMAML_RECORD.name])
def test_the_evaluator_adapts_inside_inference_mode(method, synthetic_source, single_thread):
    # The evaluator computes features under torch.inference_mode; the heads' gradient steps must
    # still run there, and give the same prediction as a plain forward under no_grad.
    torch.manual_seed(0)
    model = build_model(method, **({"width": 8} if method == FOMAML_RECORD.name else {})).eval()
    rows = evaluate(model, synthetic_source, 0, EvalProtocol(episodes=4, seeds=(0,), shots=(1, 2), image_size=64),
                    method=method)
    assert per_seed(rows)["miou"].between(0, 100).all()
    query, support, masks = episode(channels=model.backbone.out_channels["layer4"])
    features = ({"layer4": query}, {"layer4": support}, masks, 1, (12, 12))
    with torch.no_grad():
        plain = model.head(*features)["logits"]
    with torch.inference_mode():
        inference = model.head(*[{k: v.clone() for k, v in f.items()} if isinstance(f, dict) else f
                                 for f in features])["logits"]
    torch.testing.assert_close(plain, inference)


def test_fomaml_with_no_inner_step_predicts_with_its_initialisation():
    torch.manual_seed(0)
    model = FOMAML(FOMAMLConfig(width=8, inner_steps=0)).eval()
    query, support, masks = episode(channels=model.backbone.out_channels["layer4"])
    with torch.no_grad():
        out = model.head({"layer4": query}, {"layer4": support}, masks, 1, (6, 6))
        theta = {k: v.detach() for k, v in model.initialisation().items()}
        expected = head_logits(theta, F.normalize(query, dim=1))
    torch.testing.assert_close(out["logits"], expected)
    assert torch.equal(out["support_loss"][0, 0], out["support_loss"][0, 1])  # nothing moved


def test_the_inner_loop_trace_scores_every_iterate_and_its_last_is_the_models_prediction():
    from fsslib.analysis.adaptation import inner_loop_trace, with_random_start

    torch.manual_seed(0)
    model = build_model(FOMAML_RECORD.name, width=8).eval()
    g = torch.Generator().manual_seed(2)
    masks = torch.zeros(2, 1, 48, 48, dtype=torch.long)
    masks[..., 10:30, 12:40] = 1
    batch = {"query_img": torch.randn(2, 3, 48, 48, generator=g), "support_imgs": torch.randn(2, 1, 3, 48, 48, generator=g),
             "support_masks": masks, "query_mask": masks[:, 0]}
    trace = inner_loop_trace(model, batch, steps=7)
    assert trace.support_loss.shape == trace.query_iou.shape == (2, 8)
    assert (trace.support_loss.diff(axis=1).iloc[:, 1:] < 0).all().all()  # each step lowers L_S here
    with torch.no_grad():
        predicted = model(batch)["logits"].argmax(1)  # the model's own 5 steps
    assert torch.equal(predicted, torch.stack([p[model.config.inner_steps] for p in trace.predictions]))

    fresh = with_random_start(model, seed=1)
    theta, fresh_theta = model.initialisation(), fresh.initialisation()
    assert all(not torch.equal(theta[k], fresh_theta[k]) for k in theta)
    assert all(torch.equal(a, b) for a, b in zip(model.backbone.state_dict().values(), fresh.backbone.state_dict().values()))
    assert torch.equal(with_random_start(model, seed=1).classifier.weight, fresh.classifier.weight)  # seeded
