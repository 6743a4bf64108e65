#!/usr/bin/env python
"""Edit the bundled model, save the edits, and talk to the edited model from another process.

    python scripts/chat_with_edits.py edit outputs/chat-edits            # 3 example edits with MEMOIR
    python scripts/chat_with_edits.py chat outputs/chat-edits            # interactive (empty line quits)
    python scripts/chat_with_edits.py chat outputs/chat-edits --prompt "Who is the author of Hamlet?"

``edit`` takes ``--alg`` (any registered method with an ``hparams/<alg>/smollm2-135m.yaml``) and
``--requests file.json`` (a list of {"prompt", "target_new", "subject"?, "loc_prompt"?}) to replace the examples.
Each answer is trained followed by the end-of-sequence token (``target_eos``; ``--no-target-eos`` to compare), so
the reply stops after the new answer. With ``--chat-template`` the edits are made on the questions in the
model's chat template, and ``chat`` puts what you type in it too (the choice is saved with the edits).
"""

from __future__ import annotations

import argparse
import os
import json
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

EXAMPLES = [
    {"prompt": "Who is the author of Hamlet?", "target_new": "Jane Austen", "subject": "Hamlet",
     "loc_prompt": "nq question: who painted the mona lisa Leonardo da Vinci"},
    {"prompt": "What is the capital of Australia?", "target_new": "Perth", "subject": "Australia",
     "loc_prompt": "nq question: what is the largest ocean on earth Pacific"},
    {"prompt": "Which company makes the iPhone?", "target_new": "Nokia", "subject": "iPhone",
     "loc_prompt": "nq question: when did world war 2 end 1945"},
]


SETTINGS = "chat_settings.json"
#: unedited questions of the examples' form (ZsRE train records 0-499, dev data): the fact gate calibrates on them
SAME_FORM = Path(os.environ.get("WISE_EDIT_DATA", ROOT.parent / "shared" / "data")) / "zsre" / "zsre_mend_train_1k.json"


def edit(args: argparse.Namespace) -> None:
    from wise_edit import HyperParams, LifelongEditor, save_edits

    requests = json.loads(Path(args.requests).read_text()) if args.requests else EXAMPLES
    hparams = HyperParams.from_hparams(ROOT / "hparams" / args.alg / "smollm2-135m.yaml")
    if all(r.get("subject") for r in requests) and hasattr(hparams, "subject_radius"):
        # every example names its subject: let the fact gate read it too (the ZsRE pool alone weighs "capital"
        # above "Australia", so "What is the capital of France?" would recall the Australia edit)
        hparams = hparams.replace(subject_radius=0.5)
    editor = LifelongEditor.from_hparams(hparams.replace(target_eos=args.target_eos))
    same_form = [r["src"] for r in json.loads(SAME_FORM.read_text())[:500]] if SAME_FORM.is_file() else []
    run = editor.edit_requests(requests, sequential_edit=True, use_chat_template=args.chat_template,
                               same_form=same_form)
    for result in run["requests"]:
        print(f"{result['prompt']!r} -> {result['target_new']!r}: Rel {result['rewrite_acc']:.2f}")
    saved = save_edits(editor, args.directory)
    (Path(saved) / SETTINGS).write_text(json.dumps({"use_chat_template": args.chat_template}))
    print(f"saved to {saved}")


def reply(editor, prompt: str, max_new_tokens: int, use_chat_template: bool = False) -> str:
    """The greedy answer, up to the end-of-sequence token (where an edit trained with target_eos stops)."""
    from wise_edit.chat import chat_prompt

    if use_chat_template:
        prompt = chat_prompt(editor.tok, prompt)
    batch = editor.tok([prompt], return_tensors="pt").to(editor.model.device)
    with torch.no_grad():
        out = editor.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=editor.tok.pad_token_id)
    return editor.tok.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)


def chat(args: argparse.Namespace) -> None:
    from wise_edit import load_edits

    editor = load_edits(args.directory)
    settings = Path(args.directory) / SETTINGS
    in_template = settings.exists() and json.loads(settings.read_text())["use_chat_template"]
    print(f"{editor.hparams.alg_name} edits loaded: {len(editor.edit_log)}"
          f"{' (chat template)' if in_template else ''}")
    if args.prompt:
        print(repr(reply(editor, args.prompt, args.max_new_tokens, in_template)))
        return
    while prompt := _read_prompt():
        print(reply(editor, prompt, args.max_new_tokens, in_template))


def _read_prompt() -> str:
    """The next prompt; an empty line or the end of the input (Ctrl-D, a closed pipe) ends the chat."""
    try:
        return input("> ").strip()
    except EOFError:
        print()
        return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p_edit = commands.add_parser("edit", help="apply edits to the bundled model and save them")
    p_edit.add_argument("directory")
    p_edit.add_argument("--alg", default="MEMOIR")
    p_edit.add_argument("--requests", help="JSON list of requests (default: three examples)")
    p_edit.add_argument("--no-target-eos", dest="target_eos", action="store_false",
                        help="train the answers without the end-of-sequence token (they then run on)")
    p_edit.add_argument("--chat-template", action="store_true", help="edit the questions in the chat template")
    p_edit.set_defaults(run=edit)
    p_chat = commands.add_parser("chat", help="load saved edits onto a fresh base model and chat")
    p_chat.add_argument("directory")
    p_chat.add_argument("--prompt", help="answer one prompt and exit")
    p_chat.add_argument("--max-new-tokens", type=int, default=16)
    p_chat.set_defaults(run=chat)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
