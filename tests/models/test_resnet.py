import pytest
import torch
from torch import nn

from cim_gym.models import MultiExitResNet, ResNet


def make(depth: int = 14, cls=ResNet, **kw) -> nn.Module:
    torch.manual_seed(0)
    model = cls(depth, 10, in_channels=1, **kw).eval()
    # Random BN statistics so blocks are far from identity and dropping one visibly changes the output.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("depth,blocks", [(8, 3), (20, 9), (32, 15), (56, 27)])
def test_block_count(depth: int, blocks: int) -> None:
    assert ResNet(depth, 10).num_blocks == blocks


@pytest.mark.parametrize("depth", [0, 7, 9, 21, "20"])
def test_bad_depth_is_a_clear_error(depth) -> None:
    with pytest.raises(ValueError, match="depth"):
        ResNet(depth, 10)


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_any_input_size_and_channels(shape) -> None:
    model = ResNet(8, 7, in_channels=shape[0]).eval()
    assert model(torch.randn(2, *shape)).shape == (2, 7)


def test_full_mask_equals_plain_forward() -> None:
    model, x = make(), torch.randn(5, 1, 28, 28)
    full = torch.ones(5, model.num_blocks)
    torch.testing.assert_close(model(x, mask=full), model(x), rtol=0, atol=0)


def test_dropping_blocks_changes_output_but_keeps_shape() -> None:
    model, x = make(), torch.randn(4, 1, 28, 28)
    mask = torch.ones(4, model.num_blocks)
    mask[:, [0, model.stage_starts[1], model.stage_starts[2]]] = 0  # drop every stage's downsampling block
    out = model(x, mask=mask)
    assert out.shape == (4, 10)
    assert not torch.allclose(out, model(x))
    assert model(x, mask=torch.zeros(4, model.num_blocks)).shape == (4, 10)


def test_dropped_block_is_its_shortcut() -> None:
    model, x = make(), torch.randn(3, 1, 16, 16)
    mask = torch.ones(3, model.num_blocks)
    mask[:, 1] = 0
    h = model.blocks[0](model.stem(x))
    h = model.blocks[1].shortcut(h)
    for block in model.blocks[2:]:
        h = block(h)
    torch.testing.assert_close(model(x, mask=mask), model.head(h))


def test_per_sample_masks_equal_running_each_sample_alone() -> None:
    model, x = make(), torch.randn(6, 1, 28, 28)
    mask = torch.randint(0, 2, (6, model.num_blocks), generator=torch.Generator().manual_seed(3))
    batched = model(x, mask=mask)
    alone = torch.cat([model(x[i : i + 1], mask=mask[i : i + 1]) for i in range(6)])
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)


def test_dropped_blocks_are_not_computed() -> None:
    model, x = make(), torch.randn(4, 1, 8, 8)
    seen: list[int] = []
    model.blocks[2].conv1.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    mask = torch.ones(4, model.num_blocks)
    mask[[0, 2], 2] = 0
    model(x, mask=mask)
    assert seen == [2]


@pytest.mark.parametrize("mask", [torch.ones(2, 5), torch.full((2, 6), 2.0)])
def test_bad_mask_is_a_clear_error(mask) -> None:
    model = make()
    with pytest.raises(ValueError, match="mask"):
        model(torch.randn(2, 1, 8, 8), mask=mask)


def test_mac_counts_match_a_hand_count() -> None:
    # ResNet-8 on 1x8x8, widths 16/32/64, 10 classes.
    model = ResNet(8, 10, in_channels=1)
    stem = 1 * 9 * 16 * 64
    b0 = 2 * (16 * 9 * 16 * 64)
    b1 = 16 * 9 * 32 * 16 + 32 * 9 * 32 * 16
    b2 = 32 * 9 * 64 * 4 + 64 * 9 * 64 * 4
    fc = 64 * 10
    assert model.block_macs((1, 8, 8)).tolist() == [b0, b1, b2]
    assert model.base_macs((1, 8, 8)) == stem + fc
    mask = torch.tensor([[1, 0, 1], [0, 0, 0]])
    assert model.path_macs(mask, (1, 8, 8)).tolist() == [stem + fc + b0 + b2, stem + fc]


def test_features_are_fixed_length() -> None:
    assert make().features(torch.randn(3, 1, 28, 28)).shape == (3, 16)


# ---- multi-exit -------------------------------------------------------------------------------------------------
def test_default_exits_after_each_stage() -> None:
    model = make(20, MultiExitResNet)
    assert model.exit_after == (2, 5, 8)
    assert model.num_exits == 3


def test_all_exits_in_one_pass_equal_single_exits() -> None:
    model, x = make(14, MultiExitResNet, exit_after=[0, 2, 3]), torch.randn(5, 1, 28, 28)
    every = model(x)
    assert every.shape == (model.num_exits, 5, 10)
    for e in range(model.num_exits):
        torch.testing.assert_close(model(x, exit=e), every[e], rtol=1e-5, atol=1e-5)
    # The last exit is the plain ResNet forward.
    torch.testing.assert_close(every[-1], ResNet.forward(model, x), rtol=1e-5, atol=1e-5)


def test_per_sample_exits() -> None:
    model, x = make(14, MultiExitResNet, exit_head="linear"), torch.randn(6, 1, 8, 8)
    exits = torch.tensor([0, 2, 1, 0, 2, 1])
    every = model(x)
    out = model(x, exit=exits)
    torch.testing.assert_close(out, every[exits, torch.arange(6)], rtol=1e-5, atol=1e-5)


def test_samples_that_left_are_not_computed_further() -> None:
    model, x = make(14, MultiExitResNet), torch.randn(4, 1, 8, 8)
    seen: list[int] = []
    model.blocks[-1].conv1.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    model(x, exit=torch.tensor([0, 2, 1, 2]))
    assert seen == [2]


def test_exit_macs() -> None:
    model = MultiExitResNet(8, 10, in_channels=1, exit_head="linear")
    stem, fc = 1 * 9 * 16 * 64, 10
    b = model.block_macs((1, 8, 8)).tolist()
    assert model.exit_macs((1, 8, 8)).tolist() == [
        stem + b[0] + 16 * fc,
        stem + b[0] + b[1] + 32 * fc,
        stem + sum(b) + 64 * fc,
    ]


@pytest.mark.parametrize("exit_after", [[8], [1, 1], [2, 1], [-1]])
def test_bad_exit_positions(exit_after) -> None:
    with pytest.raises(ValueError, match="exit_after"):
        MultiExitResNet(14, 10, exit_after=exit_after)


@pytest.mark.parametrize("exit", [3, -1, torch.tensor([0.5, 1.0])])
def test_bad_exit_index(exit) -> None:
    model = make(8, MultiExitResNet)
    with pytest.raises(ValueError, match="exit"):
        model(torch.randn(2, 1, 8, 8), exit=exit)
