"""A web app over a trained model (Gradio, the optional ``app`` extra: ``pip install -e .[app]``).

  python -m mavilt_jax.app --checkpoint=DIR_OR_BUNDLE [--port=7860]

Serves on 127.0.0.1 only. Three panels:
  - upload a radiograph (PNG, JPEG or DICOM) -> its report, with the image as the model reads it
    (cropped and resized) beside its VQ-GAN reconstruction (what the LLM sees: the image codes);
  - a question about the uploaded radiograph -> the answer, and P(yes) for a yes/no question;
  - a report -> generated radiograph(s), with the guidance scale, the seed and the number of images.
Unusable inputs (not an image, an empty report, ...) show as error messages in the page.
``--checkpoint`` takes a stage-2 workdir, an export bundle, or the main job's workdir (its model).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import numpy as np

from mavilt_jax import cli, image_io

EXAMPLE_REPORT = "Heart size is normal. Small left pleural effusion. No pneumothorax."


def build_app(model: Any) -> Any:
    """The Gradio Blocks page over a loaded `inference.Model` (not launched)."""
    import gradio as gr

    from mavilt_jax import inference

    def user_error(e: Exception) -> Exception:
        return gr.Error(str(e), duration=None, print_exception=False)  # stays until closed

    def write_report(path: str | None, decoding: str, seed: float):
        if not path:
            raise gr.Error("Upload a radiograph first (PNG, JPEG or DICOM).", print_exception=False)
        try:
            pixels = image_io.read_pixels(path)
            seen = model.preprocess(pixels)
            recon = model.reconstruct(pixels)
            report = model.report(pixels, method=decoding, seed=int(seed))
        except (image_io.ImageError, inference.InferenceError) as e:
            raise user_error(e) from e
        return seen, recon, report

    def ask(path: str | None, question: str):
        if not path:
            raise gr.Error("Upload a radiograph first, then ask about it.", print_exception=False)
        try:
            answer = model.answer(image_io.read_pixels(path), question)
        except (image_io.ImageError, inference.InferenceError) as e:
            raise user_error(e) from e
        p_yes = "" if answer.p_yes is None else f"{answer.p_yes:.3f}"
        return answer.text, p_yes

    def generate(report: str, guidance: float, seed: float, count: float):
        try:
            images = model.image(report, guidance_scale=float(guidance), seed=int(seed), num_samples=int(count))
        except inference.InferenceError as e:
            raise user_error(e) from e
        return [np.asarray(im) for im in images]

    with gr.Blocks(title="mavilt_jax") as page:
        gr.Markdown(f"## mavilt_jax: chest radiograph -> report, questions, report -> radiograph\n"
                    f"Model: `{model.source}` ({model.config.stage}, step {model.step}). Research use only.")
        with gr.Row():
            upload = gr.File(label="Radiograph (PNG, JPEG or DICOM)", file_types=[".png", ".jpg", ".jpeg", ".dcm", ".dicom"],
                             type="filepath", elem_id="upload")
            seen = gr.Image(label="Input as the model reads it", type="numpy", interactive=False, height=256, elem_id="seen")
            recon = gr.Image(label="VQ-GAN reconstruction (what the LLM sees)", type="numpy", interactive=False, height=256,
                             elem_id="recon")
        with gr.Row():
            decoding = gr.Radio(["greedy", "beam", "sample"], value="greedy", label="Decoding")
            report_seed = gr.Number(value=0, precision=0, label="Seed")
            report_button = gr.Button("Write report", variant="primary", elem_id="report_button")
        report_out = gr.Textbox(label="Report", lines=4, elem_id="report_out")
        with gr.Row():
            question = gr.Textbox(label="Question about the radiograph", value="Is there a pleural effusion?",
                                  elem_id="question")
            ask_button = gr.Button("Ask", elem_id="ask_button")
        with gr.Row():
            answer_out = gr.Textbox(label="Answer", elem_id="answer_out")
            p_yes_out = gr.Textbox(label="P(yes)", elem_id="p_yes_out")
        gr.Markdown("### Report -> radiograph")
        report_in = gr.Textbox(label="Report", value=EXAMPLE_REPORT, lines=3, elem_id="report_in")
        with gr.Row():
            guidance = gr.Slider(1.0, 10.0, value=3.0, step=0.5, label="Guidance scale", elem_id="guidance")
            image_seed = gr.Number(value=0, precision=0, label="Seed", elem_id="image_seed")
            count = gr.Slider(1, 4, value=1, step=1, label="Images")
            image_button = gr.Button("Generate", variant="primary", elem_id="image_button")
        gallery = gr.Gallery(label="Generated radiographs", columns=4, elem_id="gallery")

        report_button.click(write_report, [upload, decoding, report_seed], [seen, recon, report_out])
        ask_button.click(ask, [upload, question], [answer_out, p_yes_out])
        image_button.click(generate, [report_in, guidance, image_seed, count], [gallery])
    return page


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m mavilt_jax.app", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a stage-2 workdir, an export bundle or a main-job workdir")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--allow_unfinished", action="store_true")
    args = parser.parse_args(argv)
    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax's read-only restore notes are not for the user
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no telemetry calls
    try:
        import gradio  # noqa: F401
    except ImportError:
        parser.exit(2, f"{parser.prog}: error: the web app needs gradio (pip install -e '.[app]')\n")
    from mavilt_jax import inference

    try:
        model = inference.load(args.checkpoint, allow_unfinished=args.allow_unfinished)
    except inference.InferenceError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    build_app(model).launch(server_name="127.0.0.1", server_port=args.port, show_error=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
