"""Errors raised by the data loaders.

``DataFormatError`` is raised for input that cannot be read as the format it claims to be:
a non-numeric cell, a wrong column count, a ragged file, a bad file name, an empty file,
a NaN where none is allowed, a corrupt gzip stream. Its message locates the problem the way
compilers do, ``path:line:column: message``; ``line`` and ``column`` are 1-based and omitted
when they do not apply.
"""

from __future__ import annotations

import os

from edge_agent.contract.errors import AgentError


class DataFormatError(AgentError, ValueError):
    """Malformed input data.

    Attributes:
        path: the file (or folder) at fault, as a string.
        line: 1-based line number in that file, or None.
        column: 1-based column (field) number on that line, or None.
        message: what is wrong, without the location.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        line: int | None = None,
        column: int | None = None,
        message: str = "malformed data",
    ) -> None:
        self.path = os.fspath(path)
        self.line = line
        self.column = column
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.path
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return f"{where}: {self.message}"

    def __reduce__(self):  # keep pickling (multiprocessing) working with the keyword layout
        return (type(self), (self.path, self.line, self.column, self.message))
