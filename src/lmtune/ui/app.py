"""The Gradio page: five tabs laid out over the callbacks of the other modules in this folder.

Every component a test or a user refers to has an elem_id `lt-<tab>-<what>`; the Train form's
fields are labelled with their config keys (`train.lr`) and carry elem_id `lt-cfg-<section>-<key>`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lmtune.ui.callbacks import guarded, guarded_stream
from lmtune.ui.chat_tab import base_of, chat_command, resolve_target, stream_chat
from lmtune.ui.data_tab import inspect_data, save_upload
from lmtune.ui.paths import list_data_files
from lmtune.ui.render import code_block
from lmtune.ui.runs import run_choices, runs_markdown
from lmtune.ui.tasks_tab import EXPORT_FORMATS, default_export_path, run_eval, run_export
from lmtune.ui.train_form import OPEN_SECTIONS, FieldSpec, form_fields, method_visible
from lmtune.ui.train_tab import TrainManager

FORMATS = ("auto", "openai", "sharegpt", "alpaca", "dolly", "prompt_completion")
GGUF_QUANTS = ("f16", "bf16", "q8_0", "q4_0")
CSS = ".lt-example{max-height:420px;overflow:auto}"


def _widget(gr: Any, spec: FieldSpec, *, visible: bool = True) -> Any:
    kw: dict[str, Any] = {"label": spec.key, "info": spec.description[:300] or None, "visible": visible}
    kw["elem_id"] = "lt-cfg-" + spec.key.replace(".", "-").replace("_", "-")
    value = spec.form_default
    if spec.kind == "choice":
        choices = ([""] if spec.optional else []) + spec.choices
        return gr.Dropdown(choices=choices, value=value if value in choices else choices[0], **kw)
    if spec.kind == "bool":
        return gr.Checkbox(value=bool(value), **kw)
    if spec.kind in ("int", "float") and not spec.optional:  # optional numbers: a textbox, empty = null
        return gr.Number(value=value, precision=0 if spec.kind == "int" else None, **kw)
    return gr.Textbox(
        value="" if value is None else str(value),
        lines=1,
        placeholder="null" if spec.optional else None,
        **kw,
    )


def build_app(root: str | Path = ".", runs_dir: str = "runs") -> Any:
    """The Blocks app for files under `root`, runs under `root/runs_dir`."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    root = Path(root).resolve()
    runs_path = root / runs_dir
    specs = form_fields()
    manager = TrainManager(root, runs_dir, specs)

    def data_files() -> Any:
        return gr.update(choices=list_data_files(root))

    def runs_update() -> Any:
        return gr.update(choices=[str(Path(r).relative_to(root)) for r in run_choices(runs_path)])

    with gr.Blocks(title="lmtune") as demo:
        gr.Markdown(
            f"# lmtune\nWorking directory `{root}` · runs in `{runs_dir}/`. Every action below shows the "
            "`lmtune` command that does the same from a terminal."
        )
        # ---------------------------------------------------------------- Data
        with gr.Tab("Data", id="data", elem_id="lt-tab-data"):
            with gr.Row():
                d_file = gr.Dropdown(
                    choices=list_data_files(root), value=None, allow_custom_value=True,
                    label="data file (inside the working directory)", elem_id="lt-data-file", scale=3,
                )  # fmt: skip
                d_upload = gr.File(
                    label="or upload", type="filepath", elem_id="lt-data-upload", scale=1, height=120
                )
            with gr.Row():
                d_model = gr.Textbox("smollm2-135m-instruct", label="model (tokenizer and chat template)",
                                     elem_id="lt-data-model")  # fmt: skip
                d_fmt = gr.Dropdown(list(FORMATS), value="auto", label="format")
                d_len = gr.Number(1024, precision=0, label="max_length")
                d_train_on = gr.Dropdown(["all", "last", "all_tokens"], value="all", label="train_on")
                d_example = gr.Number(1, precision=0, label="example")
            d_go = gr.Button("Inspect", variant="primary", elem_id="lt-data-inspect")
            d_summary = gr.Markdown(elem_id="lt-data-summary")
            with gr.Row():
                d_hist = gr.HTML(elem_id="lt-data-histogram")
                d_example_html = gr.HTML(elem_id="lt-data-example")

            def _inspect(path: str, model: str, fmt: str, n: float, train_on: str, ex: float) -> Any:
                return inspect_data(root, path or "", model, fmt, int(n or 1024), train_on, int(ex or 1))

            d_go.click(
                guarded(_inspect, lambda m: (m, "", "")),
                [d_file, d_model, d_fmt, d_len, d_train_on, d_example],
                [d_summary, d_hist, d_example_html],
            )
            d_upload.upload(
                guarded(lambda f: gr.update(value=save_upload(root, f), choices=list_data_files(root)),
                        lambda m: gr.update()),
                d_upload, d_file,
            )  # fmt: skip
        # ---------------------------------------------------------------- Train
        with gr.Tab("Train", id="train", elem_id="lt-tab-train"):
            widgets: list[Any] = []
            method_widgets: list[tuple[FieldSpec, Any]] = []
            sections: dict[str, list[FieldSpec]] = {}
            for spec in specs:
                sections.setdefault(spec.section or "task", []).append(spec)
            with gr.Row():
                with gr.Column(scale=1):
                    gr.Markdown("Config keys as in the YAML (`lmtune config schema` documents each one).")
                    for section, items in sections.items():
                        with gr.Accordion(section, open=section in OPEN_SECTIONS or section == "task"):
                            for spec in items:
                                w = _widget(gr, spec, visible=method_visible(spec, "lora"))
                                widgets.append(w)
                                if spec.methods:
                                    method_widgets.append((spec, w))
                with gr.Column(scale=1):
                    with gr.Row():
                        t_preview = gr.Button("Show YAML and command", elem_id="lt-train-preview")
                        t_start = gr.Button("Start", variant="primary", elem_id="lt-train-start")
                        t_stop = gr.Button("Stop", variant="stop", elem_id="lt-train-stop")
                        t_resume = gr.Button("Resume", elem_id="lt-train-resume")
                    t_msg = gr.Markdown(elem_id="lt-train-message")
                    t_status = gr.Markdown(elem_id="lt-train-status")
                    t_loss = gr.HTML(elem_id="lt-train-loss")
                    t_log = gr.Textbox(
                        label="log", lines=10, max_lines=10, elem_id="lt-train-log", autoscroll=True
                    )
                    gr.Markdown("### Runs")
                    t_runs = gr.Markdown(runs_markdown(runs_path), elem_id="lt-train-runs")
                    t_yaml = gr.Code(
                        language="yaml", label="equivalent config (YAML)", elem_id="lt-train-yaml"
                    )
            method_name = widgets[[s.key for s in specs].index("method.name")]
            method_name.change(
                lambda m: [gr.update(visible=method_visible(s, m)) for s, _ in method_widgets],
                method_name, [w for _, w in method_widgets],
            )  # fmt: skip
            timer = gr.Timer(1.0)

            def _preview(*values: Any) -> Any:
                p = manager.preview(list(values))
                return (
                    f"Same as:\n{code_block(p.command, 'bash')}\n(the config is written to `{p.config_path}` on Start)",
                    p.yaml,
                )

            t_preview.click(guarded(_preview, lambda m: (m, gr.update())), widgets, [t_msg, t_yaml])
            t_start.click(guarded(lambda *v: (manager.start(list(v)), manager.preview(list(v)).yaml),
                                  lambda m: (m, gr.update())), widgets, [t_msg, t_yaml])  # fmt: skip
            t_resume.click(guarded(lambda *v: manager.resume(list(v)), lambda m: m), widgets, t_msg)
            t_stop.click(guarded(manager.stop, lambda m: m), None, t_msg)
            timer.tick(
                guarded(lambda: (*manager.poll(), runs_markdown(runs_path)), lambda m: (m, gr.update(), gr.update(), gr.update())),
                None, [t_status, t_loss, t_log, t_runs],
            )  # fmt: skip
        # ---------------------------------------------------------------- Chat
        with gr.Tab("Chat", id="chat", elem_id="lt-tab-chat"):
            with gr.Row():
                c_target = gr.Dropdown(choices=[], allow_custom_value=True, label="run or model",
                                       elem_id="lt-chat-target", scale=3)  # fmt: skip
                c_refresh = gr.Button("Refresh runs", scale=1)
            with gr.Row():
                c_system = gr.Textbox(label="system prompt", scale=3)
                c_max = gr.Number(64, precision=0, label="max_new_tokens")
                c_temp = gr.Number(0.0, label="temperature")
                c_compare = gr.Checkbox(
                    False, label="side by side with the base model", elem_id="lt-chat-compare"
                )
            with gr.Row():
                c_bot = gr.Chatbot(label="tuned", elem_id="lt-chat-bot", height=320, render_markdown=False)
                c_base = gr.Chatbot(
                    label="base", elem_id="lt-chat-base", height=320, visible=False, render_markdown=False
                )
            c_msg = gr.Textbox(label="message", elem_id="lt-chat-message")
            c_send = gr.Button("Send", variant="primary", elem_id="lt-chat-send")
            c_status = gr.Markdown(elem_id="lt-chat-status")
            c_compare.change(lambda on: gr.update(visible=on), c_compare, c_base)

            def _chat(
                target: str,
                hist: list,
                base_hist: list,
                msg: str,
                system: str,
                n: float,
                temp: float,
                compare: bool,
            ) -> Any:
                t = resolve_target(target, root)
                cmd = code_block(chat_command(target, system, int(n or 64), float(temp or 0)), "bash")
                yield hist, base_hist, "loading the model ...", ""
                for h in stream_chat(
                    t,
                    hist or [],
                    msg,
                    system=system,
                    max_new_tokens=int(n or 64),
                    temperature=float(temp or 0),
                ):
                    yield h, base_hist, "streaming ...", ""
                if compare:
                    base = base_of(t)
                    for b in stream_chat(
                        base,
                        base_hist or [],
                        msg,
                        system=system,
                        max_new_tokens=int(n or 64),
                        temperature=float(temp or 0),
                    ):
                        yield h, b, f"streaming the base model ({base}) ...", ""
                    cmd += "\n" + code_block(
                        chat_command(base, system, int(n or 64), float(temp or 0)), "bash"
                    )
                yield h, (b if compare else base_hist), f"**done** · same as:\n{cmd}", ""

            c_send.click(
                guarded_stream(_chat, lambda m: (gr.update(), gr.update(), m, gr.update())),
                [c_target, c_bot, c_base, c_msg, c_system, c_max, c_temp, c_compare],
                [c_bot, c_base, c_status, c_msg],
            )
        # ---------------------------------------------------------------- Evaluate
        with gr.Tab("Evaluate", id="eval", elem_id="lt-tab-eval"):
            with gr.Row():
                e_target = gr.Dropdown(
                    choices=[], allow_custom_value=True, label="run or model", elem_id="lt-eval-target"
                )
                e_data = gr.Dropdown(choices=list_data_files(root), allow_custom_value=True, label="data file",
                                     elem_id="lt-eval-data")  # fmt: skip
                e_metrics = gr.Textbox("auto", label="metrics (comma list, auto = what the data supports)")
                e_limit = gr.Number(
                    None, precision=0, label="limit (records, empty = all)", elem_id="lt-eval-limit"
                )
            e_go = gr.Button("Evaluate", variant="primary", elem_id="lt-eval-run")
            e_out = gr.Markdown(elem_id="lt-eval-report")
            e_go.click(
                guarded_stream(lambda t, d, m, n: run_eval(root, t, d or "", m, int(n) if n else None), lambda m: m),
                [e_target, e_data, e_metrics, e_limit], e_out,
            )  # fmt: skip
        # ---------------------------------------------------------------- Export
        with gr.Tab("Export", id="export", elem_id="lt-tab-export"):
            with gr.Row():
                x_target = gr.Dropdown(
                    choices=[], allow_custom_value=True, label="run", elem_id="lt-export-target"
                )
                x_fmt = gr.Dropdown(
                    list(EXPORT_FORMATS), value="gguf", label="format", elem_id="lt-export-format"
                )
                x_quant = gr.Dropdown(
                    list(GGUF_QUANTS), value="f16", label="gguf quant", elem_id="lt-export-quant"
                )
                x_out = gr.Textbox(label="output (inside the working directory)", elem_id="lt-export-out")
            x_go = gr.Button("Export", variant="primary", elem_id="lt-export-run")
            x_report = gr.Markdown(elem_id="lt-export-report")
            for w in (x_target, x_fmt):
                w.change(lambda t, f: default_export_path(t or "", f), [x_target, x_fmt], x_out)
            x_fmt.change(lambda f: gr.update(visible=f == "gguf"), x_fmt, x_quant)  # only GGUF reads --quant
            x_go.click(
                guarded_stream(lambda t, f, o, q: run_export(root, t, f, o, q), lambda m: m),
                [x_target, x_fmt, x_out, x_quant], x_report,
            )  # fmt: skip
        for button, target in ((c_refresh, c_target),):
            button.click(runs_update, None, target)
        for tab_target in (c_target, e_target, x_target):
            demo.load(runs_update, None, tab_target)
            t_runs.change(runs_update, None, tab_target)
        demo.load(data_files, None, d_file)
        demo.load(data_files, None, e_data)
    return demo


def launch(root: str | Path = ".", *, host: str = "127.0.0.1", port: int = 7860, runs_dir: str = "runs",
           share: bool = False) -> None:  # fmt: skip
    """Serve the UI (blocking). Local only unless `host` says otherwise; a public link only with `share`."""
    import gradio as gr

    demo = build_app(root, runs_dir)
    theme = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )
    demo.queue(default_concurrency_limit=4).launch(
        server_name=host, server_port=port, share=share, inbrowser=False, ssr_mode=False,
        show_error=False, footer_links=[], theme=theme, css=CSS,
    )  # fmt: skip
