"""What the tests share, in one place: tiny generated GGUF models (`tiny_models`), a fake
Hugging Face hub and PyPI mirror on 127.0.0.1 (`registry_fakes`), a server on a thread
(`server`), the TUI driver (`tui`) and hand-made traces and costs (`sim`). Test modules import
from here, never from each other."""
