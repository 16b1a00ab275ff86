"""A small desktop chat window (Tkinter) over llamba: replies stream into the window from a worker thread, Stop ends
a reply, and the window stays responsive while the model generates (the kernels release the GIL).

    python tools/chat_window.py [-m MODEL] [-t THREADS]

The pattern for an app: generate in a worker thread, hand pieces to the UI thread through a queue it polls
(`after`), and stop with a threading.Event passed as `cancel=`. Tk is only touched from the UI thread.
"""

import argparse
import queue
import threading
import tkinter as tk
from tkinter import scrolledtext

POLL_MS = 30


class ChatWindow:
    def __init__(self, root: tk.Tk, llm, max_tokens: int = 512):
        self.root, self.llm, self.max_tokens = root, llm, max_tokens
        self.messages: list[dict] = []
        self.pieces: queue.Queue = queue.Queue()  # worker -> UI: text pieces, then None at the end
        self.cancel = threading.Event()
        self.worker: threading.Thread | None = None
        root.title(f"llamba chat: {llm.path.name}")
        self.log = scrolledtext.ScrolledText(root, wrap=tk.WORD, height=24, width=80, state=tk.DISABLED)
        self.log.pack(fill=tk.BOTH, expand=True, padx=6, pady=6)
        bar = tk.Frame(root)
        bar.pack(fill=tk.X, padx=6, pady=(0, 6))
        self.entry = tk.Entry(bar)
        self.entry.pack(side=tk.LEFT, fill=tk.X, expand=True)
        self.entry.bind("<Return>", lambda _: self.send())
        self.send_button = tk.Button(bar, text="Send", command=self.send)
        self.send_button.pack(side=tk.LEFT, padx=(6, 0))
        self.stop_button = tk.Button(bar, text="Stop", command=self.cancel.set, state=tk.DISABLED)
        self.stop_button.pack(side=tk.LEFT, padx=(6, 0))
        self.reply = ""

    def _write(self, text: str):
        self.log.configure(state=tk.NORMAL)
        self.log.insert(tk.END, text)
        self.log.see(tk.END)
        self.log.configure(state=tk.DISABLED)

    def send(self):
        text = self.entry.get().strip()
        if not text or self.worker is not None:
            return
        self.entry.delete(0, tk.END)
        self.messages.append({"role": "user", "content": text})
        self._write(f"you: {text}\nmodel: ")
        self.reply = ""
        self.cancel.clear()
        self.send_button.configure(state=tk.DISABLED)
        self.stop_button.configure(state=tk.NORMAL)
        self.worker = threading.Thread(target=self._generate, args=(list(self.messages),), daemon=True)
        self.worker.start()
        self.root.after(POLL_MS, self._poll)

    def _generate(self, messages):  # worker thread: no Tk calls here
        try:
            for piece in self.llm.chat(messages, stream=True, max_tokens=self.max_tokens, cancel=self.cancel):
                self.pieces.put(piece)
        except Exception as e:  # noqa: BLE001 (shown in the window)
            self.pieces.put(f"\n[error: {e}]")
        self.pieces.put(None)

    def _poll(self):  # UI thread
        while True:
            try:
                piece = self.pieces.get_nowait()
            except queue.Empty:
                self.root.after(POLL_MS, self._poll)
                return
            if piece is None:
                break
            self.reply += piece
            self._write(piece)
        self.messages.append({"role": "assistant", "content": self.reply})
        self._write("\n\n")
        self.worker = None
        self.send_button.configure(state=tk.NORMAL)
        self.stop_button.configure(state=tk.DISABLED)

    @property
    def busy(self) -> bool:
        return self.worker is not None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python tools/chat_window.py", description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default=None, help="GGUF path or known model name")
    ap.add_argument("-t", "--threads", type=int, default=None)
    args = ap.parse_args(argv)
    from runtime import LLM

    llm = LLM(args.model, n_threads=args.threads)
    root = tk.Tk()
    ChatWindow(root, llm)
    root.mainloop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
