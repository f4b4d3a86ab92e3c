"""Read a pickle that may only hold plain data, so a crafted file cannot run code.

``pickle.load`` imports and calls whatever a file names (e.g. ``os.system``). The refer API's annotation files
(``refs(unc).p``) hold only lists, dicts, strings and numbers, which pickle rebuilds without importing
anything; :class:`PlainDataUnpickler` refuses every import except the built-in ``set`` / ``frozenset``
containers, so only plain data types can be built.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from vkvtrain.errors import DatasetError

#: the only globals a plain-data pickle may name (Python 2 pickles write ``__builtin__``)
ALLOWED_GLOBALS = frozenset((module, name) for module in ("builtins", "__builtin__") for name in ("set", "frozenset"))


class UnsafePickleError(DatasetError):
    """A pickle asks to import something other than a plain data type."""


class PlainDataUnpickler(pickle.Unpickler):
    """An unpickler that builds plain data only: every global lookup except :data:`ALLOWED_GLOBALS` fails."""

    def __init__(self, file: Any, source: str) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UnsafePickleError(f"{self.source} asks to build {module}.{name}; it should hold only plain data "
                                f"(lists, dicts, strings, numbers), so it was not loaded. Use the original file.")


def load_plain_pickle(path: Path, dataset: str) -> Any:
    """Unpickle ``path`` allowing plain data only.

    Raises:
        UnsafePickleError: the file names a global (a class or function): it could run code.
        DatasetError: the file is truncated, corrupt or not a pickle.
    """
    with open(path, "rb") as fh:
        try:
            return PlainDataUnpickler(fh, f"{dataset}: {path}").load()
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, UnicodeDecodeError, IndexError, KeyError,
                AttributeError, TypeError) as err:
            raise DatasetError(f"{dataset}: {path} is not a readable pickle ({type(err).__name__}: {err})") from err
