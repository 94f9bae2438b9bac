"""DualStyleGAN's sampling network N (models/style_sampler.py): the data repetition (with the >1000-images
fix), the lr schedule, IMLE pulling samples onto the data, the structure/colour split, files and the CLI."""
from __future__ import annotations

import pytest
import torch

from models.style_codes import StyleCodes
from models.style_sampler import ICPNet, StyleSampler, _lr, repeat_and_jitter, train_imle, train_style_sampler


def test_repetition_jitter_and_schedule():
    g = torch.Generator().manual_seed(0)
    assert repeat_and_jitter(torch.zeros(300, 4), 0.05, g).shape == (900, 4)     # 1000 // 300 = 3 copies
    assert repeat_and_jitter(torch.zeros(2000, 4), 0.05, g).shape == (2000, 4)   # not 0 copies
    jitter = repeat_and_jitter(torch.zeros(10, 1000), 0.05, g)
    assert jitter.std().item() == pytest.approx(0.05, rel=0.02)
    assert [_lr(e) for e in (0, 49, 50, 120)] == [1e-3, 1e-3, 5e-4, 2.5e-4]


def test_imle_pulls_samples_onto_the_data():
    g = torch.Generator().manual_seed(1)
    centers = torch.randn(6, 8, generator=g) * 3
    data = centers.repeat(40, 1) + 0.05 * torch.randn(240, 8, generator=g)
    torch.manual_seed(0)
    net = ICPNet(8)

    def gap() -> float:  # IMLE's coverage: mean distance of each data point to its nearest of 1024 fresh samples
        net.eval()
        with torch.no_grad():
            s = net(torch.randn(1024, 128, generator=torch.Generator().manual_seed(9)))
        return float(torch.cdist(data, s).min(dim=1).values.mean())

    before = gap()
    losses = train_imle(net, data, epochs=60, generator=g)
    assert losses[-1] < 0.2 * losses[0] and gap() < 0.3 * before


def test_sampler_splits_rows_saves_and_loads(tmp_path):
    g = torch.Generator().manual_seed(2)
    codes = torch.randn(5, 6, 4, generator=g)
    model, losses = train_style_sampler(codes, res_index=2, epochs=3, seed=0)
    assert set(losses) == {"structure", "colour"} and len(losses["colour"]) == 3
    assert model.structure.out_dim == 3 * 4 and model.colour.out_dim == 3 * 4
    s, c = model.split(codes)
    assert torch.equal(torch.cat([s.view(5, 3, 4), c.view(5, 3, 4)], dim=1), codes)
    a = model.sample(4, torch.Generator().manual_seed(5))
    assert a.shape == (4, 6, 4) and not model.training
    back = StyleSampler.load(model.save(tmp_path / "n.pt"))
    assert torch.equal(back.sample(4, torch.Generator().manual_seed(5)), a)
    assert not torch.equal(model.sample(4, torch.Generator().manual_seed(5), batch_stats=True), a)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        StyleSampler.load(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="not a readable style sampler"):
        StyleSampler.load(tmp_path / "bad.pt")


def test_cli(tmp_path, capsys):
    from launch.style_sampler import main

    g = torch.Generator().manual_seed(3)
    shape = (3, 6, 4)
    table = StyleCodes(["a.png", "b.png", "c.png"], torch.randn(shape, generator=g), torch.randn(shape, generator=g))
    path = table.save(tmp_path / "codes.pt")
    assert main(["--codes", str(path), "--res-index", "2", "--epochs", "2", "--out", str(tmp_path / "n.pt")]) == 0
    assert StyleSampler.load(tmp_path / "n.pt").sample(2).shape == (2, 6, 4)
    assert main(["--codes", str(tmp_path / "nope.pt"), "--res-index", "2", "--out", str(tmp_path / "x.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--codes", str(path), "--res-index", "5", "--out", str(tmp_path / "x.pt")]) == 2
    assert "does not split" in capsys.readouterr().err
