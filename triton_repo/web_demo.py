"""The web demo: a Gradio chat on the any2any deployment, like NExT-GPT's demo_app.py.

    python triton_repo/web_demo.py --engines engines/tiny [--port 7860]
    python triton_repo/web_demo.py --url 127.0.0.1:8001 [--port 7860]

With `--engines` it writes the build's model repository to a temporary folder and starts Triton on
loopback itself; with `--url` it attaches to a running one. The page (on 127.0.0.1 unless `--host`
says otherwise) talks to Triton over gRPC through `triton_repo.client`, never to engines in process.

A turn is text with any of an image, a sound and a video; the answer streams in, with a progress
bar while its media are drawn, and its picture, sound or video shows inline (image, audio player,
video player). The whole conversation goes with every turn, and the page's session lets the server
reuse its KV cache (docs/conversation.md). Controls: output modality ("auto": the model decides by
its signal tokens), top-p, temperature, max new tokens, and steps and guidance of the media (blank:
the model's own); Rerun answers the last turn again with the current controls; Clear starts over.
Ctrl-C or SIGTERM stops the page and the server it started.
"""
from __future__ import annotations

import queue
import shutil
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
from tritonclient.utils import InferenceServerException

from runtime.cli import make_parser
from runtime.conversation import Conversation, Medium, Turn
from runtime.limits import Limits
from runtime.response import write_response
from triton_repo.client import DEFAULT_TIMEOUT_S, Any2AnyClient
from triton_repo.serve import ServerError, add_deployment_args, deployment

AUTO = "auto"  # the output-modality choice that lets the model decide
OUTPUTS = (AUTO, "image", "audio", "video")
MIME = {"image": "image/png", "audio": "audio/wav", "video": "video/mp4"}
DEMO_MAX_NEW_TOKENS = 246  # NExT-GPT's demo's, within the deployment's limit
# System fonts: the default theme would have every visitor's browser fetch Google's.
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def chat_history(conversation: Conversation) -> list[dict[str, Any]]:
    """The chatbot's messages for a conversation: each turn's text, then each of its media inline."""
    messages = []
    for turn in conversation.turns:
        if turn.text:
            messages.append({"role": turn.role, "content": turn.text})
        for medium in turn.media:
            messages.append({"role": turn.role, "content": {"path": str(medium.path), "mime_type": MIME.get(medium.modality)}})
    return messages


class WebDemo:
    """The page's handlers on the deployment at `url`; answers' media go to folders under `root`."""

    def __init__(self, url: str, root: Path, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.url, self.root, self.timeout_s = url, root, timeout_s
        with Any2AnyClient(url, timeout_s) as client:
            client.check_protocol()
            self.meta, self.limits = client.media_meta(), client.limits()

    def submit(self, text: str, image: str | None, audio: str | None, video: str | None, conversation: Conversation,
               session: str, *settings: Any, progress: gr.Progress = gr.Progress()) -> Iterator[tuple[Any, ...]]:
        """A new user turn, answered; yields (chatbot, conversation, text, image, audio, video)."""
        if not (text or "").strip():
            raise gr.Error("Type a message first.")
        media = [Medium(m, Path(p)) for m, p in (("image", image), ("audio", audio), ("video", video)) if p]
        asked = conversation.then(Turn.user(text.strip(), media))
        for history, answered in self._answer(asked, session, settings, progress):
            yield history, answered or conversation, "", None, None, None

    def rerun(self, conversation: Conversation, session: str, *settings: Any,
              progress: gr.Progress = gr.Progress()) -> Iterator[tuple[Any, ...]]:
        """The last user turn answered again, with the controls as they are now."""
        turns = conversation.turns[:-1] if conversation.turns and conversation.turns[-1].role == "assistant" else conversation.turns
        if not turns:
            raise gr.Error("Nothing to rerun yet.")
        for history, answered in self._answer(Conversation(turns), session, settings, progress):
            yield history, answered or conversation

    def _answer(self, asked: Conversation, session: str, settings: tuple[Any, ...],
                progress: gr.Progress) -> Iterator[tuple[list[dict[str, Any]], Conversation | None]]:
        """(chatbot, None) while the answer streams in, then (chatbot, the conversation with it)."""
        events: queue.Queue[tuple[str, Any]] = queue.Queue()
        kwargs = self.settings(*settings)
        threading.Thread(target=self._ask, args=(asked, session, kwargs, events), daemon=True).start()
        shown = ""
        while True:
            kind, value = events.get()
            if kind == "text":
                shown += value
                yield [*chat_history(asked), {"role": "assistant", "content": shown.strip() or "…"}], None
            elif kind == "step":
                modality, done, total = value
                progress((done, total), desc=f"drawing the {modality}", unit="steps")
            elif kind == "error":
                raise gr.Error(value)
            else:
                folder = self.root / uuid.uuid4().hex
                body = write_response(folder, value.text, value.media, self.meta)
                answered = asked.then(value.turn({m: folder / name for m, name in body["media"].items()}))
                yield chat_history(answered), answered
                return

    def _ask(self, conversation: Conversation, session: str, kwargs: dict[str, Any], events: queue.Queue) -> None:
        try:
            with Any2AnyClient(self.url, self.timeout_s) as client:
                resp = client.chat(
                    conversation, session=session, stream=True, on_text=lambda piece: events.put(("text", piece)),
                    on_step=lambda *step: events.put(("step", step)), **kwargs,
                )
            events.put(("answer", resp))
        except InferenceServerException as e:
            events.put(("error", e.message()))
        except ValueError as e:  # the client refused it before sending: a missing file, a conversation rule
            events.put(("error", str(e)))

    @staticmethod
    def settings(output: str, top_p: float, temperature: float, max_new_tokens: float, steps: float | None,
                 guidance: float | None, seed: float | None) -> dict[str, Any]:
        """The keyword arguments of `Any2AnyClient.chat` the controls ask for; a blank is the model's default."""
        return {
            "output": None if output == AUTO else output, "top_p": float(top_p), "temperature": float(temperature),
            "max_new_tokens": int(max_new_tokens), "steps": None if steps is None else int(steps),
            "guidance": None if guidance is None else float(guidance), "seed": int(seed or 0),
        }

    def page(self) -> gr.Blocks:
        limits: Limits = self.limits
        with gr.Blocks(title="any2any", analytics_enabled=False) as page:
            gr.Markdown("## any2any\nText, image, audio and video in; text, image, audio and video out.")
            conversation = gr.State(Conversation())
            session = gr.State(lambda: f"web-{uuid.uuid4().hex}")  # one per browser tab: its KV cache
            with gr.Row():
                with gr.Column(scale=3):
                    chatbot = gr.Chatbot(elem_id="chatbot", height=600, label="conversation")
                    text = gr.Textbox(elem_id="prompt", label="message", placeholder="describe this image / show me a red circle")
                    with gr.Row():
                        submit = gr.Button("Submit & Run", variant="primary", elem_id="submit")
                        rerun = gr.Button("Rerun", elem_id="rerun")
                        clear = gr.Button("Clear history", elem_id="clear")
                with gr.Column(scale=2):
                    image = gr.Image(type="filepath", sources=["upload"], label="image", elem_id="image_in")
                    audio = gr.Audio(type="filepath", sources=["upload"], label="audio", elem_id="audio_in")
                    video = gr.Video(sources=["upload"], label="video", elem_id="video_in")
                    output = gr.Radio(list(OUTPUTS), value=AUTO, label="output (auto: the model decides)", elem_id="output")
                    with gr.Accordion("settings", open=False):
                        top_p = gr.Slider(0.0, 1.0, value=1.0, step=0.01, label="top-p")
                        temperature = gr.Slider(0.0, min(2.0, limits.max_temperature), value=0.0, step=0.05, label="temperature (0: greedy)")
                        max_new = min(DEMO_MAX_NEW_TOKENS, limits.max_new_tokens)
                        max_tokens = gr.Slider(1, limits.max_new_tokens, value=max_new, step=1, label="max new tokens")
                        steps = gr.Number(None, precision=0, minimum=1, maximum=limits.max_steps, label="steps (blank: the model's)")
                        guidance = gr.Number(None, minimum=0, maximum=limits.max_guidance, label="guidance (blank: the model's)")
                        seed = gr.Number(0, precision=0, label="seed")
            controls = [output, top_p, temperature, max_tokens, steps, guidance, seed]
            asked = [text, image, audio, video, conversation, session, *controls]
            answer = [chatbot, conversation, text, image, audio, video]
            submit.click(self.submit, asked, answer)
            text.submit(self.submit, asked, answer)
            rerun.click(self.rerun, [conversation, session, *controls], [chatbot, conversation])
            clear.click(lambda: ([], Conversation(), f"web-{uuid.uuid4().hex}"), None, [chatbot, conversation, session])
        return page


def main(argv: list[str] | None = None) -> int:
    p = make_parser(__doc__)
    add_deployment_args(p, "the page", 7860)
    args = p.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="any2any-web-"))
    try:
        with deployment(args) as url:
            demo = WebDemo(url, root, args.request_timeout)
            print(f"triton: {url}\nweb demo: http://{args.host}:{args.port}", flush=True)
            # Blocks until Ctrl-C or SIGTERM (a KeyboardInterrupt here), then closes the page;
            # leaving `deployment` stops Triton.
            demo.page().queue().launch(server_name=args.host, server_port=args.port, allowed_paths=[str(root)],
                                       theme=THEME, ssr_mode=False, quiet=True, footer_links=[])
    except KeyboardInterrupt:
        pass
    except (ServerError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
