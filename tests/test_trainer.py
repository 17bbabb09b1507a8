import csv
import json

import pytest
import torch
from torch import nn

from spikesearch import IF, SpikeSearchError, SpikingCNN, TrainConfig, Trainer, load_dataset
from spikesearch.measure.spikes import SpikeCounter
from spikesearch.runs import Run
from spikesearch.train.checkpoint import load_checkpoint, load_model_weights
from spikesearch.train.pipeline import make_loaders
from spikesearch.train.setup import seed_everything
from spikesearch.train.trainer import OPTIMIZERS


def loaders(n_train=512, n_test=256, batch=64):
    return make_loaders("fmnist-small", None, batch, torch.device("cpu"), 0, n_train, n_test)


def small_net():
    return SpikingCNN(1, 10, 28, widths=(16, 32), timesteps=2, tau=2.0)


def fit(tmp_path, name, epochs, resume=False, lr=2e-3, n_train=512):
    seed_everything(0)
    tr, _, te, _ = loaders(n_train)
    model = small_net()
    cfg = TrainConfig(epochs=epochs, optimizer="adam", lr=lr, weight_decay=0, progress=False)
    result = Trainer(model, tr, te, cfg, Run(name, tmp_path, quiet=True, resume=resume)).fit()
    return model, result


def test_spiking_cnn_learns_bundled_data(tmp_path):
    _, result = fit(tmp_path, "learn", 2, lr=5e-3, n_train=1000)
    assert result["final_test_acc"] > 0.5  # chance is 0.10
    run = tmp_path / "learn"
    for f in ("log.txt", "metrics.csv", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run / f).is_file(), f
    assert len((run / "metrics.csv").read_text().splitlines()) == 3
    assert any((run / "tb").iterdir())


def test_resume_is_bit_exact(tmp_path, monkeypatch):
    full, r_full = fit(tmp_path, "full", 3)
    original = Trainer.train_epoch

    def crash_in_second_epoch(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt  # killed mid-epoch: epoch 1 is checkpointed, epoch 2 is not
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path, "split", 3)
    monkeypatch.setattr(Trainer, "train_epoch", original)
    # a fresh process builds everything anew and has drawn other random numbers meanwhile
    torch.manual_seed(999)
    part, r_part = fit(tmp_path, "split", 3, resume=True)
    for (k, a), b in zip(full.state_dict().items(), part.state_dict().values()):
        assert torch.equal(a, b), k
    assert [h["train_loss"] for h in r_full["history"]] == [h["train_loss"] for h in r_part["history"]]


def test_sgd_weight_decay_is_keyword_not_dampening():
    opt = OPTIMIZERS.get("sgd")(nn.Linear(2, 2).parameters(), TrainConfig(lr=0.1, momentum=0.9, weight_decay=5e-4))
    g = opt.param_groups[0]
    assert g["weight_decay"] == 5e-4 and g["dampening"] == 0 and g["momentum"] == 0.9


def test_checkpoint_for_other_architecture_names_layers(tmp_path):
    torch.save({"model": small_net().state_dict()}, tmp_path / "a.pt")
    other = SpikingCNN(1, 10, 28, widths=(16, 64), timesteps=2)
    with pytest.raises(SpikeSearchError, match=r"shape mismatch.*features\.3"):
        load_model_weights(other, load_checkpoint(tmp_path / "a.pt"), "a.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SpikeSearchError, match="cannot load"):
        load_checkpoint(tmp_path / "junk.pt")


def test_nan_loss_stops_cleanly_and_keeps_last_checkpoint(tmp_path):
    fit(tmp_path, "nan", 1)
    before = (tmp_path / "nan/checkpoints/last.pt").read_bytes()
    tr, _, te, _ = loaders()
    model = small_net()
    model.classifier.register_forward_hook(lambda m, i, out: out * float("nan"))  # diverges in epoch 2
    trainer = Trainer(model, tr, te, TrainConfig(epochs=2, progress=False), Run("nan", tmp_path, quiet=True, resume=True))
    with pytest.raises(SpikeSearchError, match="loss became nan at epoch 2.*last good checkpoint is .*last.pt"):
        trainer.fit()
    assert (tmp_path / "nan/checkpoints/last.pt").read_bytes() == before


@pytest.mark.parametrize("field,value", [("epochs", 0), ("batch_size", -1), ("optimizer", "lbfgs"), ("scheduler", "poly")])
def test_bad_train_config(field, value):
    cfg = TrainConfig(**{field: value})
    with pytest.raises(SpikeSearchError):
        cfg.validate()


def test_unwritable_run_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SpikeSearchError, match="cannot write the run folder"):
        Run("r", tmp_path / "file")


def test_spike_counter_counts_sops_and_macs():
    conv_in = nn.Linear(4, 3, bias=False)  # analog input -> MACs
    lif = IF(v_threshold=0.5)
    fc = nn.Linear(3, 2, bias=False)  # spike input -> SOPs
    net = nn.Sequential(conv_in, lif, fc)
    with torch.no_grad():
        conv_in.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]))
    x = torch.tensor([[0.7, 0.2, 0.1, 0.3], [0.9, 0.9, 0.0, 0.0]])
    with SpikeCounter(net) as sc:
        net(x)
    r = sc.report(n_images=2, timesteps=1)
    # spikes: sample 0 -> [1,0,0], sample 1 -> [1,1,0]: 3 spikes of 6 updates
    assert r["spikes_per_image"] == 1.5 and r["mean_firing_rate"] == 0.5
    assert r["macs_per_image"] == 12  # 3 outputs x 4 inputs
    assert r["sops_per_image"] == pytest.approx(2 * 3 * 0.5)  # 2 outputs x 3 inputs x rate 0.5
    assert r["energy_uj_per_image"] == pytest.approx((12 * 4.6 + 3 * 0.9) * 1e-6)


def test_wrong_input_shape_is_clear_error():
    net = small_net()
    with pytest.raises(SpikeSearchError, match=r"expected 1-channel images"):
        net(torch.zeros(2, 3, 28, 28))
    with pytest.raises(SpikeSearchError, match=r"\[T, B, 1, H, W\]"):
        net(torch.zeros(2, 28, 28))


def test_nan_loss_before_any_checkpoint_does_not_name_one(tmp_path):
    tr, _, te, _ = loaders()
    model = small_net()
    model.classifier.register_forward_hook(lambda m, i, out: out * float("nan"))
    trainer = Trainer(model, tr, te, TrainConfig(epochs=1, progress=False), Run("nan", tmp_path, quiet=True))
    with pytest.raises(SpikeSearchError, match="loss became nan at epoch 1, batch 1; stopped: no checkpoint was written yet"):
        trainer.fit()
    assert not (tmp_path / "nan/checkpoints/last.pt").exists()


def test_rank_statistics_match_their_definitions():
    import itertools

    import numpy as np

    from spikesearch.measure.stats import kendall_tau_b, ranks, spearman, top_k_overlap

    rng = np.random.default_rng(0)
    a = rng.integers(0, 6, 40).astype(float)  # many ties
    b = a + rng.normal(0, 2, 40)
    b[:5] = b[5]
    assert ranks([10, 20, 20, 5]).tolist() == [2, 3.5, 3.5, 1]
    conc = disc = tx = ty = 0  # tau-b by its definition, pair by pair
    for i, j in itertools.combinations(range(40), 2):
        sx, sy = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
        if sx and sy:
            conc, disc = conc + (sx == sy), disc + (sx != sy)
        else:
            tx, ty = tx + (sx == 0 and sy != 0), ty + (sy == 0 and sx != 0)
    expected = (conc - disc) / np.sqrt((conc + disc + tx) * (conc + disc + ty))
    assert kendall_tau_b(a, b, chunk=7) == pytest.approx(expected)
    ra, rb = ranks(a), ranks(b)
    assert spearman(a, b) == pytest.approx(np.corrcoef(ra, rb)[0, 1])
    assert spearman(a, -a) == pytest.approx(-1) and kendall_tau_b(b, b) == pytest.approx(1)
    assert top_k_overlap([5, 4, 3, 2], [5, 1, 3, 2], 2) == 0.5


def test_best_checkpoint_is_chosen_on_validation_never_on_test(tmp_path, monkeypatch):
    """Validation and test disagree on purpose: best.pt must follow validation, and the reported best test
    accuracy is that checkpoint's, not the highest test figure."""
    from spikesearch.train import trainer as trainer_module

    tr, val, te, _ = make_loaders("fmnist-small", None, 64, torch.device("cpu"), 0, 256, 64, val_fraction=0.25)
    scripted = {id(val): iter([0.5, 0.9, 0.6]), id(te): iter([0.9, 0.5, 0.7])}
    monkeypatch.setattr(trainer_module, "evaluate", lambda model, loader, amp=False: (1.0, next(scripted[id(loader)])))
    result = Trainer(small_net(), tr, te, TrainConfig(epochs=3, progress=False), Run("val", tmp_path, quiet=True),
                     val=val).fit()
    assert (result["best_epoch"], result["best_val_acc"], result["best_test_acc"]) == (2, 0.9, 0.5)
    assert result["final_test_acc"] == 0.7
    assert torch.load(tmp_path / "val/checkpoints/best.pt", weights_only=True)["epoch"] == 1  # 0-based: epoch 2
    header, *rows = (tmp_path / "val/metrics.csv").read_text().splitlines()
    assert "val_acc" in header.split(",") and len(rows) == 3


def test_validation_split_is_held_out_seeded_and_sized():
    from spikesearch.data.datasets import hold_out

    train, _, _ = load_dataset("fmnist-small")
    part = train.subset(1000)
    kept, val = hold_out(part, 0.1, seed=3)
    assert (len(kept), len(val)) == (900, 100)
    # disjoint and together the whole subset: compare the images themselves
    flat = lambda s: {bytes(img.numpy()) for img in s.images}  # noqa: E731
    assert not flat(kept) & flat(val) and flat(kept) | flat(val) == flat(part)
    again, val_again = hold_out(part, 0.1, seed=3)
    assert torch.equal(val.images, val_again.images)
    _, other = hold_out(part, 0.1, seed=4)
    assert not torch.equal(val.images, other.images)
    assert hold_out(part, 0.0, seed=3) == (part, None)
    with pytest.raises(SpikeSearchError, match="validation fraction"):
        hold_out(part.subset(5), 0.05, seed=0)  # rounds to no validation image


def test_train_command_records_the_split_and_reports_both_checkpoints(tmp_path):
    from spikesearch.cli.main import main

    assert main(["train", "--epochs", "2", "--train_subset", "400", "--test_subset", "100", "--widths", "8", "16",
                 "--timestep", "2", "--quiet", "--runs_dir", str(tmp_path), "--val_fraction", "0.2"]) == 0
    cfg = json.loads((tmp_path / "train/config.json").read_text())
    res = json.loads((tmp_path / "train/results.json").read_text())
    assert cfg["val_fraction"] == 0.2 and (res["train_images"], res["val_images"]) == (320, 80)
    rows = list(csv.DictReader((tmp_path / "train/metrics.csv").open()))
    best = max(range(2), key=lambda i: float(rows[i]["val_acc"]))
    assert res["best_epoch"] == best + 1 and res["best_test_acc"] == pytest.approx(float(rows[best]["test_acc"]))
    assert res["test_acc"] == pytest.approx(float(rows[-1]["test_acc"]))  # the final epoch's, spikes counted on it


def test_step_scheduler_is_one_schedule_everywhere():
    """`--scheduler step` in train, train-ann and snasnet is SNASNet's official step: lr/10 at 50 % and 75 %."""
    from spikesearch.train.trainer import SCHEDULERS

    def lrs(scheduler, epochs=8):
        cfg = TrainConfig(epochs=epochs, lr=1.0, scheduler=scheduler)
        opt = OPTIMIZERS.get("sgd")(torch.nn.Linear(1, 1).parameters(), cfg)
        sched = SCHEDULERS.get(scheduler)(opt, cfg)
        out = []
        for _ in range(epochs):
            out.append(round(opt.param_groups[0]["lr"], 6))
            opt.step()
            sched.step()
        return out

    assert lrs("step") == [1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01]
    assert lrs("periodic", 61)[29:32] == [1, 0.1, 0.1]  # every step_size (30) epochs
