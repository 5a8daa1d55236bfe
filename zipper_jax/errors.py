"""Errors a user makes and can fix: a misspelt gin binding, a missing file, an unknown task, a
token id outside its tower's vocabulary, unreadable audio, a run directory that holds another
model. The `zipper` command prints such an error as one line and exits 2; any other exception is
a bug, and keeps its traceback."""


class UserError(ValueError):
  """What the user gave is wrong; the message says what and where."""
