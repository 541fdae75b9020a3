"""The README's model script: one chat request to the embedded SmolLM2, streamed to the
terminal. No Discord involved: every backend is a Streamer, used here from a plain script.

Needs the llama extra and the model's weights (see the README's Set-up); run it with
``python examples/chat_with_model.py "Hi! What is Discord?"``.
"""

import sys

from genbot.models import ChatRequest, GenerationSettings
from genbot.models.llamacpp import LlamaCppStreamer


def main(question="Hi!", max_new_tokens=64):
    """Ask the embedded model ``question``; print the answer as it streams and return it."""
    model = LlamaCppStreamer()  # the embedded SmolLM2-135M-Instruct; or a GGUF path
    model.start_process()
    try:
        messages = [{"role": "user", "content": question}]
        request = ChatRequest(messages, GenerationSettings(max_new_tokens=max_new_tokens))
        answer = []
        with model.stream() as stream:  # from a script; `async with` / `async for` in a bot
            for delta in stream(request):
                print(delta, end="", flush=True)
                answer.append(delta)
        print()
        return "".join(answer)
    finally:
        model.close()


if __name__ == "__main__":
    main(" ".join(sys.argv[1:]) or "Hi!")
