import pytest
import torch

from model import masks
from support.model_helpers import documents, packer, tiny_config


def brute_force(segment_ids, span_ids, bidirectional):
    b, t = segment_ids.shape
    out = torch.zeros(b, t, t, dtype=torch.bool)
    for r in range(b):
        for q in range(t):
            for k in range(t):
                seg_q, seg_k = int(segment_ids[r, q]), int(segment_ids[r, k])
                span_q, span_k = int(span_ids[r, q]), int(span_ids[r, k])
                same_image = span_q > 0 and span_q == span_k
                if seg_q == 0:  # padding sees only itself
                    out[r, q, k] = q == k
                else:
                    out[r, q, k] = seg_q == seg_k and (k <= q or (bidirectional and same_image))
    return out


@pytest.mark.parametrize("mode", ["transfusion", "mar", "discrete"])
def test_dense_mask_equals_brute_force_on_mixed_packed_rows(mode):
    cfg = tiny_config(mode, latent_size=2)
    docs = documents(cfg) + documents(cfg, seed=1, video=True)
    b = packer(cfg).pack(docs, seq_len=48)
    assert b.tokens.shape[0] >= 2 and (b.segment_ids == 0).any()
    bidirectional = mode == "transfusion"
    dense = masks.dense_mask(b.segment_ids, b.span_ids, bidirectional)
    assert torch.equal(dense, brute_force(b.segment_ids, b.span_ids, bidirectional))
    assert dense.any(-1).all()  # no empty rows, padding included


def test_transfusion_mask_shape_by_example():
    seg = torch.tensor([[1, 1, 1, 1, 2, 2]])
    span = torch.tensor([[0, 1, 1, 0, 0, 0]])
    m = masks.dense_mask(seg, span, bidirectional=True)[0].int().tolist()
    assert m == [[1, 0, 0, 0, 0, 0],
                 [1, 1, 1, 0, 0, 0],  # the image's first token sees its second (bidirectional)
                 [1, 1, 1, 0, 0, 0],
                 [1, 1, 1, 1, 0, 0],
                 [0, 0, 0, 0, 1, 0],  # the next document sees nothing before it
                 [0, 0, 0, 0, 1, 1]]


def test_document_lengths_are_flash_cu_seqlens():
    seg = torch.tensor([[1, 1, 2, 0], [1, 2, 2, 2]])
    assert masks.document_lengths(seg).tolist() == [2, 1, 1, 1, 3]
