"""Random masking: a partition of the patches, the right counts, and an exact inverse."""

import pytest
import torch

from workloads.masking import gather_tokens, num_kept, random_masking


@pytest.mark.parametrize(
    ("num_patches", "ratio", "expected_keep"),
    [
        (64, 0.75, 16),
        (64, 0.5, 32),
        (196, 0.75, 49),
        (16, 0.875, 2),
        (10, 0.9, 1),
        (8, 0.99, 1),
    ],
)
def test_counts_follow_the_ratio(num_patches, ratio, expected_keep):
    assert num_kept(num_patches, ratio) == expected_keep
    masks = random_masking(3, num_patches, ratio)
    assert masks.idx_keep.shape == (3, expected_keep)
    assert masks.idx_mask.shape == (3, num_patches - expected_keep)
    assert masks.ids_restore.shape == (3, num_patches)


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_keep_and_mask_partition_the_patches(ratio):
    masks = random_masking(5, 64, ratio, generator=torch.Generator().manual_seed(0))
    union = torch.cat([masks.idx_keep, masks.idx_mask], dim=1)
    for row in range(5):
        keep = set(masks.idx_keep[row].tolist())
        hidden = set(masks.idx_mask[row].tolist())
        assert not keep & hidden
        assert torch.equal(union[row].sort().values, torch.arange(64))
    assert masks.idx_keep.dtype == torch.long


def test_ids_restore_undoes_the_shuffle():
    batch, num_patches = 4, 36
    masks = random_masking(batch, num_patches, 0.75, generator=torch.Generator().manual_seed(1))
    # Each token carries its own position id, so restored order must be 0..N-1.
    positions = torch.arange(num_patches).float().repeat(batch, 1).unsqueeze(-1)  # (B, N, 1)
    shuffled = torch.cat(
        [gather_tokens(positions, masks.idx_keep), gather_tokens(positions, masks.idx_mask)], dim=1
    )
    restored = gather_tokens(shuffled, masks.ids_restore).squeeze(-1)
    assert torch.equal(restored, torch.arange(num_patches).float().repeat(batch, 1))


def test_masks_differ_per_sample_and_follow_the_generator():
    first = random_masking(2, 64, 0.75, generator=torch.Generator().manual_seed(7))
    again = random_masking(2, 64, 0.75, generator=torch.Generator().manual_seed(7))
    other = random_masking(2, 64, 0.75, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first.idx_keep, again.idx_keep)
    assert torch.equal(first.ids_restore, again.ids_restore)
    assert not torch.equal(first.idx_keep, other.idx_keep)
    assert not torch.equal(first.idx_keep[0].sort().values, first.idx_keep[1].sort().values)


def test_gather_tokens_picks_rows_per_sample():
    x = torch.tensor(
        [[[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]], [[6.0, 7.0], [8.0, 9.0], [10.0, 11.0]]]
    )  # (2, 3, 2)
    idx = torch.tensor([[2, 0], [1, 1]])
    expected = torch.tensor([[[4.0, 5.0], [0.0, 1.0]], [[8.0, 9.0], [8.0, 9.0]]])
    assert torch.equal(gather_tokens(x, idx), expected)
