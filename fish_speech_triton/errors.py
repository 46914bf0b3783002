"""Errors that reach a user: each carries a message that says what is wrong and what to do."""


class FishSpeechError(Exception):
    """Base of every error the project reports to a user (tools print it as one line, Triton returns it)."""


class CheckpointError(FishSpeechError):
    """A checkpoint is missing, unreadable, or does not match the architecture."""


class InputError(FishSpeechError):
    """A request or a command-line input is invalid (bad audio, bad codes, empty text, out-of-range values)."""


class ServerBusy(FishSpeechError):
    """The server holds as many waiting requests as it is configured to: retry later (or elsewhere)."""


def first_line(exc: BaseException) -> str:
    """An exception's type and the first line of its message: some libraries (torch.load) add paragraphs of
    advice that do not apply to a user of this project."""
    lines = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {lines[0]}" if lines else exc.__class__.__name__


# How a Triton model's refusal of a request's input begins. It is also sent as INVALID_ARG, but Triton's gRPC
# stream carries only an error's message: clients tell "your input" from "the server failed" by this mark.
REFUSAL_MARK = "refused: "
# How an answer "too busy, retry" begins (sent as UNAVAILABLE; the gRPC stream again carries only the message).
BUSY_MARK = "busy: "
