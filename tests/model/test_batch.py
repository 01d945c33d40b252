import pytest
import torch
from support.model_helpers import BOS, EOS, documents, packer, tiny_config

from core.errors import ConfigError, DataError
from model import batch as pb
from model.batch import Document, patchify, unpatchify


def test_patchify_round_trips_images_and_videos():
    image = torch.randn(4, 8, 6)
    patches, grid = patchify(image, 2)
    assert patches.shape == (12, 16) and grid == (1, 4, 3)
    assert torch.equal(unpatchify(patches, grid, 2), image)
    video = torch.randn(3, 4, 8, 8)
    patches, grid = patchify(video, 4)
    assert patches.shape == (12, 64) and grid == (3, 2, 2)
    assert torch.equal(unpatchify(patches, grid, 4, video=True), video)
    # patch (0, 1) of frame 0 is the top-right 4x4 block of every channel
    assert torch.equal(patches[1].reshape(4, 4, 4), video[0, :, :4, 4:])
    with pytest.raises(ConfigError, match="does not divide"):
        patchify(torch.randn(4, 6, 6), 4)


def test_generate_document_layout_positions_and_targets():
    cfg = tiny_config("transfusion", latent_size=4, patch_size=2)
    doc = Document("generate", [10, 11], latent=torch.randn(4, 4, 4))
    b = packer(cfg).pack([doc])
    # [bos] 10 11 [boi] 4 patches [eoi] [eos]
    assert b.tokens[0].tolist() == [BOS, 10, 11, cfg.boi_id, 0, 0, 0, 0, cfg.eoi_id, EOS]
    assert b.modality[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 0, 0]
    assert b.span_ids[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 0, 0]
    # text 0..3, image starts at 4 with a 2x2 grid (t, h, w) = (4, 4+h, 4+w), text resumes at 4+2
    assert b.positions[0, :4].tolist() == [[i, i, i] for i in range(4)]
    assert b.positions[0, 4:8].tolist() == [[4, 4, 4], [4, 4, 5], [4, 5, 4], [4, 5, 5]]
    assert b.positions[0, 8:].tolist() == [[6, 6, 6], [7, 7, 7]]
    # text predicts the next text token and [boi]; the image predicts nothing in transfusion; eoi->eos
    assert b.targets[0].tolist() == [10, 11, cfg.boi_id, -100, -100, -100, -100, -100, EOS, -100]
    assert b.latents.shape == (4, 16) and b.latent_loss.all() and b.times.shape == (4,)
    assert len(set(b.times.tolist())) == 1 and 0 < b.times[0] < 1


def test_understanding_and_discrete_targets():
    cfg = tiny_config("discrete", latent_size=2)
    codes = torch.tensor([[1, 2], [3, 4]])
    b = packer(cfg).pack([Document("understand", [7], codes=codes), Document("generate", [8], codes=codes)])
    row = b.tokens[0].tolist()
    off = cfg.code_offset
    assert row[:8] == [BOS, cfg.boi_id, off + 1, off + 2, off + 3, off + 4, cfg.eoi_id, 7]
    kinds = b.target_kind[0].tolist()
    # understanding: only [eoi] -> caption -> [eos] carries loss
    assert kinds[:9] == [0, 0, 0, 0, 0, 0, 2, 2, 0]
    # generation: bos, caption, [boi] and the codes predict the next token (image loss from boi on)
    gen = kinds[9:]
    assert gen[:2] == [1, 1] and gen[2:6] == [3, 3, 3, 3] and gen[6] == 0
    assert b.targets[0, 11:15].tolist() == [off + 1, off + 2, off + 3, off + 4]
    assert b.latents is None and b.latent_loss.tolist() == [False] * 4 + [True] * 4


def test_packing_rows_and_padding():
    cfg = tiny_config("transfusion")
    docs = documents(cfg)
    one = packer(cfg).pack(docs)
    assert one.tokens.shape[0] == 1 and one.num_tokens == one.tokens.shape[1]  # no padding at all
    assert one.segment_ids[0].unique().tolist() == [1, 2, 3, 4]
    rows = packer(cfg).pack(docs, seq_len=40)
    assert rows.tokens.shape[1] == 40 and rows.num_tokens == one.num_tokens
    # best fit reordered the documents; every latent is still there exactly once
    assert rows.latents.shape == one.latents.shape
    torch.testing.assert_close(rows.latents.sum(0), one.latents.sum(0))
    assert rows.segment_ids.amax(1).tolist() == [1, 1, 2]  # 33 | 32 | 20+13 tokens
    assert (rows.segment_ids == 0).any()  # padding where a row could not be filled
    with pytest.raises(DataError, match="does not fit seq_len"):
        packer(cfg).pack(docs, seq_len=10)
    # spans are numbered per row, grids listed in batch order
    assert one.span_grid.tolist() == [[1, 4, 4]] * 3


def test_best_fit_places_longest_first_into_the_tightest_row():
    # 7 and 6 open the rows, 3 fills the first (3 free) exactly, the 2s go where 4 are free
    assert pb.best_fit([3, 7, 2, 6, 2], 10, rows=2) == ([[1, 0], [3, 2, 4]], [])
    # a fixed number of rows leaves what fits nowhere over, longest first
    assert pb.best_fit([3, 7, 2, 6, 2, 5, 2], 10, rows=2) == ([[1, 0], [3, 2, 4]], [5, 6])
    # no row limit: a document that fits nowhere opens a row
    assert pb.best_fit([3, 7, 2, 6, 5], 10) == ([[1, 0], [3, 2], [4]], [])


def test_mar_random_order_permutes_generated_images_only():
    cfg = tiny_config("mar", mar_order="random")
    g = torch.Generator().manual_seed(0)
    docs = documents(cfg)
    b = packer(cfg).pack(docs, generator=g)
    coords = pb.grid_coordinates(b.positions, b.span_ids)
    spans = [coords[0][b.span_ids[0] == s] for s in (1, 2, 3)]
    raster = pb.grid_positions(0, (1, 4, 4))
    assert not torch.equal(spans[0], raster) and torch.equal(spans[1], raster)
    # every grid cell still appears exactly once, and the latent moved with its position
    assert sorted(map(tuple, spans[0].tolist())) == sorted(map(tuple, raster.tolist()))
    first = b.latents[:16]
    h, w = spans[0][0, 1], spans[0][0, 2]
    assert torch.equal(first[0], docs[1].latent[:, h, w])


def test_masked_mar_masks_most_of_each_generated_image_only():
    """MAR's masking ratio: at least mar_mask_min of a generated image (at least one token), a
    different subset per image and draw; understanding images are never masked."""
    cfg = tiny_config("mar", mar_order="masked", mar_mask_min=0.5)
    docs = [Document("generate", [5], latent=torch.randn(cfg.latent_channels, 4, 4)) for _ in range(20)]
    docs.append(Document("understand", [5], latent=torch.randn(cfg.latent_channels, 4, 4)))
    b = packer(cfg).pack(docs, generator=torch.Generator().manual_seed(0))
    per_image = b.latent_loss.reshape(len(docs), 16)  # rows may reorder documents: sort by count
    counts = sorted(per_image.sum(1).tolist())
    assert counts[0] == 0 and counts[1] >= 8 and counts[-1] <= 16 and len(set(counts[1:])) > 1
    assert len({tuple(row.tolist()) for row in per_image}) > 2


def test_bad_documents_are_data_errors():
    cfg = tiny_config("transfusion")
    with pytest.raises(DataError, match="channels"):
        packer(cfg).pack([Document("generate", [1], latent=torch.randn(3, 4, 4))])
    with pytest.raises(DataError, match="continuous latents"):
        packer(cfg).pack([Document("generate", [1], codes=torch.zeros(4, 4))])
    d = tiny_config("discrete")
    with pytest.raises(DataError, match="outside"):
        packer(d).pack([Document("generate", [1], codes=torch.full((4, 4), 99))])
    with pytest.raises(DataError, match="task"):
        packer(d).pack([Document("caption", [1])])


def test_length_matches_encoding_and_collate_keeps_rows():
    for mode in ("transfusion", "discrete"):
        cfg = tiny_config(mode, patch_size=2 if mode == "transfusion" else 1)
        docs = documents(cfg) + documents(cfg, video=True)
        p = packer(cfg)
        assert [p.length(d) for d in docs] == [len(p.encode(d).tokens) for d in docs]
    cfg = tiny_config("transfusion")
    docs = documents(cfg)
    b = packer(cfg).collate([[docs[0], docs[3]], [docs[1]]], seq_len=40)
    assert b.tokens.shape == (2, 40) and b.segment_ids[0].max() == 2 and b.segment_ids[1].max() == 1
    with pytest.raises(DataError, match="does not fit"):
        packer(cfg).collate([docs], seq_len=40)
