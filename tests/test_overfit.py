"""The generator's recipe can memorise a handful of clips: trained on four SpriteWorld clips, the
samples reproduce each clip's own scene and sprite. A recipe that cannot do this (a transformer over
4×4 patches predicting v learned noise here) will not learn from more data or steps either."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import REPO
from vimi.errors import VimiError
from vimi.io.video import decode_video
from vimi.models.denoiser import build_denoiser
from vimi.models.encoder import MultimodalEncoder, load_language_model
from vimi.models.pipeline import ViMiPipeline, to_model_frames
from vimi.models.vision import ImageTokenizer
from vimi.train.stage1 import diffusion_loss, loss_weighting, noise_schedulers
from vimi.world.generate import WorldConfig, clip_rows, plan_clips

CLIPS = 4


@pytest.fixture(scope="module")
def clips():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["world"].update(train_clips=CLIPS, eval_clips=0, frame_size=16, supersample=2)
    cfg = WorldConfig.from_params(params)
    rows = list(clip_rows(cfg, plan_clips(cfg, cfg.catalog(), "train"), "train"))
    frames = np.stack(
        [decode_video(r["video"], r["video_format"], r["num_frames"], r["height"], r["width"]) for r in rows]
    )
    return frames, [r["caption"] for r in rows], params, load_language_model()


def _overfit(frames, captions, params, language_model, denoiser, prediction, steps):
    torch.manual_seed(0)
    tokenizer, lm = language_model
    vision = ImageTokenizer(image_size=16, channels=(16, 32))
    encoder = MultimodalEncoder(tokenizer, lm, vision)
    with torch.no_grad():
        context = encoder([[c] for c in captions]).hidden_states
    model = build_denoiser(denoiser, frames.shape[1], frames.shape[2], lm.config.hidden_size)
    ddpm, ddim = noise_schedulers({**params["diffusion"], "prediction_type": prediction})
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    clean = to_model_frames(frames)
    generator = torch.Generator().manual_seed(0)
    weighting = loss_weighting(params["diffusion"])
    for _ in range(steps):
        loss = diffusion_loss(model, ddpm, clean, context, generator, weighting=weighting)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    pipe = ViMiPipeline(
        tokenizer,
        lm,
        vision,
        model.eval(),
        ddim,
        num_frames=frames.shape[1],
        frame_size=frames.shape[2],
        guidance_scale=1.0,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe(captions, num_inference_steps=20, generator=torch.Generator().manual_seed(1)).frames


def _distances(generated: np.ndarray, real: np.ndarray) -> np.ndarray:
    """Mean absolute pixel difference of every generated clip (rows) to every real clip (columns)."""
    g, r = generated.astype(np.float32), real.astype(np.float32)
    return np.abs(g[:, None] - r[None]).mean(axis=(2, 3, 4, 5))


@pytest.mark.slow
def test_the_recipe_memorises_four_clips(clips):
    frames, captions, params, language_model = clips
    denoiser = params["model"]["denoiser"] | {"block_out_channels": [32, 64], "cross_attention": [False, True]}
    generated = _overfit(
        frames, captions, params, language_model, denoiser, params["diffusion"]["prediction_type"], steps=300
    )
    d = _distances(generated, frames)
    # Each sample is close to its own clip (measured 6-10 on an Intel Xeon with AMX, 8-13 on an AMD EPYC:
    # the CPUs' float kernels differ) and closer to it than to any other; uniform noise is ~85 away, a clip
    # of another scene 50-90 (two of the four clips share a scene and lie ~8-20 apart), the control > 30.
    assert np.diag(d).max() < 15, d.round(1)
    assert (d.argmin(axis=1) == np.arange(len(d))).all(), d.round(1)
    # The sprite is there: where the real clip differs from its own background, so does the sample.
    real, fake = frames.astype(np.int16), generated.astype(np.int16)
    background = np.median(real, axis=1, keepdims=True)
    sprite = np.abs(real - background).sum(-1) > 120
    assert np.abs(fake - real).sum(-1)[sprite].mean() < np.abs(background - real).sum(-1)[sprite].mean() / 2


@pytest.mark.slow
def test_the_former_recipe_does_not(clips):
    """The control: a Wan transformer over 2×4×4 patches predicting v, same steps — 50-75 from its clips."""
    frames, captions, params, language_model = clips
    wan = {
        "type": "wan",
        "layers": 2,
        "heads": 2,
        "head_dim": 16,
        "ffn_dim": 64,
        "patch_size": [2, 4, 4],
        "freq_dim": 32,
    }
    d = _distances(_overfit(frames, captions, params, language_model, wan, "v_prediction", steps=300), frames)
    assert np.diag(d).min() > 30, d.round(1)


CANVAS_DENOISER = {
    "type": "frame_stack_unet",
    "block_out_channels": [16, 32],
    "cross_attention": [False, True],
    "attention_heads": 2,
    "canvas": True,
    "canvas_hidden": 64,
}


def _canvas_unet():
    torch.manual_seed(0)
    model = build_denoiser(CANVAS_DENOISER, 8, 16, 32)
    torch.nn.init.normal_(model.unet.conv_out.weight, std=0.05)  # a trained UNet's correction is not zero
    return model.eval()


def test_the_canvas_guess_is_the_start_and_padding_is_ignored():
    from vimi.models.denoiser import denoise

    fresh = build_denoiser(CANVAS_DENOISER, 8, 16, 32)
    sample, t = torch.randn(2, 3, 8, 16, 16), torch.tensor([3, 900])
    context = torch.randn(2, 5, 32)
    with torch.no_grad():
        # Untrained, the prediction is the canvas's guess alone, whatever the noisy clip.
        guess = fresh.context_canvas(context)
        assert guess.shape == (2, 3, 8, 16, 16)
        assert torch.equal(denoise(fresh, sample, t, context), guess)
        assert torch.equal(denoise(fresh, torch.randn_like(sample), t, context), guess)
        model = _canvas_unet()
        # Zero rows are padding (a batch's shorter prompts): the canvas reads past them.
        padded = torch.cat([context, torch.zeros(2, 3, 32)], dim=1)
        assert torch.allclose(model.context_canvas(padded), model.context_canvas(context), atol=1e-5)
        # An all-zero context (nothing to read) gives a finite guess, not NaN.
        assert torch.isfinite(model.context_canvas(torch.zeros(1, 4, 32))).all()


def test_a_canvas_denoiser_widens_for_given_frames_and_reloads(tmp_path):
    from vimi.models.denoiser import FrameStackUNet, add_frame_conditioning, denoise, frame_conditioning

    model = _canvas_unet()
    sample, t, context = torch.randn(2, 3, 8, 16, 16), torch.tensor([3, 900]), torch.randn(2, 5, 32)
    with torch.no_grad():
        before = denoise(model, sample, t, context)
        assert add_frame_conditioning(model)
        given = frame_conditioning(torch.randn(2, 3, 8, 16, 16), [2, 0])
        # The new channels start at zero: the stage-2 model computes what stage 1 did. Not bit for
        # bit: a convolution over more input channels may sum in another order (CPU kernels differ).
        widened = denoise(model, sample, t, context, given)
        torch.testing.assert_close(widened, before, rtol=1e-5, atol=1e-5)
        model.save_pretrained(tmp_path)
        again = FrameStackUNet.from_pretrained(tmp_path).eval()
        assert again.config.in_channels == 7 and again.context_canvas is not None
        assert torch.equal(denoise(again, sample, t, context, given), widened)


def test_a_reference_canvas_copies_the_reference_colours_exactly(tmp_path):
    from vimi.errors import VimiError
    from vimi.models.denoiser import FrameStackUNet, denoise
    from vimi.models.pipeline import reference_pixels

    torch.manual_seed(0)
    model = build_denoiser({**CANVAS_DENOISER, "canvas_reference": True}, 8, 16, 32).eval()
    canvas = model.context_canvas
    sample, t, context = torch.randn(2, 3, 8, 16, 16), torch.tensor([3, 900]), torch.randn(2, 5, 32)
    # A reference of colours no clip has: magenta on the left, orange on the right.
    image = np.zeros((16, 16, 3), np.uint8)
    image[:, :8], image[:, 8:] = (255, 0, 255), (255, 127, 0)
    reference = reference_pixels([["a", image, "b"], ["no image"]], 16)
    assert reference[1].abs().sum() == 0 and torch.equal(reference[0, 3], torch.ones(16, 16))
    assert torch.equal(reference[0, :3, 0, 0], torch.tensor([1.0, -1.0, 1.0]))
    with torch.no_grad():
        # The gate fully open: every pixel of the guess is one of the reference's colours, unchanged.
        gate_rows = slice(3 * 8 * 16 * 16, 4 * 8 * 16 * 16)
        canvas.mlp[-1].weight[gate_rows] = 0
        canvas.mlp[-1].bias[gate_rows] = 50.0
        guess = denoise(model, sample, t, context, None, reference)  # untrained UNet: its correction is 0
        colours = {
            tuple(round(v, 4) for v in guess[0, :, f, y, x].tolist())
            for f in range(8)
            for y in range(16)
            for x in range(16)
        }
        assert colours <= {(1.0, -1.0, 1.0), (1.0, round(127 / 127.5 - 1, 4), -1.0)}
        # A prompt without an image draws what it draws with no reference given at all.
        alone = denoise(model, sample, t, context, None, None)
        assert torch.equal(guess[1], alone[1])
        assert not torch.allclose(guess[0], alone[0])
        model.save_pretrained(tmp_path)
        again = FrameStackUNet.from_pretrained(tmp_path).eval()
        assert torch.equal(denoise(again, sample, t, context, None, reference), guess)
        with pytest.raises(VimiError, match="B×4×H×W for 2 prompts"):
            denoise(model, sample, t, context, None, reference[:, :3])
    with pytest.raises(VimiError, match="canvas_reference copies into the canvas"):
        build_denoiser({**CANVAS_DENOISER, "canvas": False, "canvas_reference": True}, 8, 16, 32)


def _silhouette(subject, pose, size: int) -> np.ndarray:
    """The pixels the rasterizer covers at least half drawing `subject` at `pose` on a size×size frame
    (its coverage read from drawings on black and on white)."""
    from vimi.world.render import draw_sprite

    black, white = np.zeros((size, size, 3), np.uint8), np.full((size, size, 3), 255, np.uint8)
    uncovered = (draw_sprite(white, subject, pose, 4).astype(float) - draw_sprite(black, subject, pose, 4)).mean(-1)
    return uncovered <= 127.5


@pytest.mark.parametrize(
    "shape,pattern", [("star", "solid"), ("triangle", "split"), ("heart", "stripes"), ("square", "checker")]
)
def test_a_stamp_canvas_pastes_the_reference_s_subject_where_the_gate_is(shape, pattern):
    """With the gate open on a path across the frame and the reference's mask on its subject, the
    stamp draws the reference's subject there: its colours and shape read back by the identity
    measure, although the reference shows it in another scene, larger and off-centre."""
    from vimi.evaluation.identity import measure_clip
    from vimi.models.denoiser import denoise, reference_size
    from vimi.models.pipeline import reference_pixels
    from vimi.world.catalog import Subject
    from vimi.world.render import draw_sprite, render_scene

    torch.manual_seed(0)
    model = build_denoiser({**CANVAS_DENOISER, "canvas_reference": True, "canvas_stamp": True}, 8, 16, 32).eval()
    canvas, side = model.context_canvas, reference_size(model, 16)
    assert side == 32
    subject = Subject("s", "s", shape, "teal", "orange", pattern, "unseen")
    ref_pose = (0.58, 0.44, 1.6, 30.0)
    picture = draw_sprite(render_scene("beach", side), subject, ref_pose, 4)
    poses = [(0.3 + 0.4 * f / 7, 0.55, 1.0, 30.0) for f in range(8)]  # moves right, tiny's sprite scale 2
    truth = np.stack([draw_sprite(render_scene("night", 16), subject, p[:2] + (2 * p[2], p[3]), 4) for p in poses])
    gate = np.stack([_silhouette(subject, p[:2] + (2 * p[2], p[3]), 16) for p in poses])
    ref_mask = torch.from_numpy(_silhouette(subject, ref_pose, side)).float()

    class Known(torch.nn.Module):  # the mask a trained canvas learns: the reference's subject
        def forward(self, cues):
            return (ref_mask * 100 - 50).expand(cues.shape[0], 1, side, side)

    canvas.keys = Known()
    background = torch.from_numpy(render_scene("night", 16)).float().div(127.5).sub(1).permute(2, 0, 1)
    pixels = 8 * 16 * 16
    with torch.no_grad():
        canvas.mlp[-1].weight.zero_()
        canvas.mlp[-1].bias.copy_(
            torch.cat(
                [
                    background[:, None].expand(3, 8, 16, 16).reshape(-1),
                    torch.from_numpy(gate).float().reshape(-1) * 100 - 50,
                ]
            )
        )
        reference = reference_pixels([["a", picture, "b"], ["no image"]], side)
        sample, t, context = torch.randn(2, 3, 8, 16, 16), torch.tensor([3, 900]), torch.randn(2, 5, 32)
        guess = denoise(model, sample, t, context, None, reference)
    assert guess.shape == (2, 3, 8, 16, 16) and pixels == gate[0].size * 8
    frames = ((guess.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).numpy()
    measured = measure_clip(frames[0], "night", sprite_scale=2.0)
    assert measured.subject_found, measured
    assert measured.color_pair == {"teal", "orange"} and measured.shape == shape, measured
    # Where the sprite is, the pasted pixels are the rasterizer's own colours, up to its anti-aliasing.
    error = np.abs(frames[0].astype(int) - truth.astype(int))[gate].mean()
    assert error < 40, error
    # A prompt without a reference gets the background alone: nothing is pasted.
    assert np.abs(frames[1].astype(int) - ((background.permute(1, 2, 0).numpy() + 1) * 127.5).round()).max() <= 1
    with pytest.raises(VimiError, match="canvas_stamp pastes the reference's subject"):
        build_denoiser({**CANVAS_DENOISER, "canvas_stamp": True}, 8, 16, 32)


def test_canvas_loss_adds_the_canvas_s_own_error_on_the_clip(clips):
    """diffusion_loss with canvas_loss w is the diffusion loss plus w × the canvas's squared error on
    the clean clip, the canvas called on its own; a denoiser without a canvas is refused."""
    from vimi.errors import VimiError

    frames, _, params, _ = clips
    torch.manual_seed(0)
    model = build_denoiser(CANVAS_DENOISER, 8, 16, 32)
    ddpm, _ = noise_schedulers({**params["diffusion"], "prediction_type": "sample"})
    clean, context = to_model_frames(frames), torch.randn(CLIPS, 5, 32)

    def loss(weight):
        return diffusion_loss(model, ddpm, clean, context, torch.Generator().manual_seed(3), canvas_loss=weight)

    with torch.no_grad():
        own = ((model.context_canvas(context) - clean) ** 2).mean()
        assert float(loss(0.5)) == pytest.approx(float(loss(0.0)) + 0.5 * float(own), rel=1e-5)
    plain = build_denoiser({**CANVAS_DENOISER, "canvas": False}, 8, 16, 32)
    with pytest.raises(VimiError, match="canvas_loss trains the denoiser's canvas"):
        diffusion_loss(plain, ddpm, clean, context, torch.Generator().manual_seed(3), canvas_loss=0.5)


def test_the_canvas_needs_clean_clip_prediction():
    from vimi.errors import VimiError
    from vimi.train.stage1 import Stage1Task

    with pytest.raises(VimiError, match="canvas guesses the clean clip: it needs diffusion.prediction_type: sample"):
        Stage1Task._check_canvas(_canvas_unet(), {"prediction_type": "v_prediction"})
    Stage1Task._check_canvas(_canvas_unet(), {"prediction_type": "sample"})
