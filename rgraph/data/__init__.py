"""Package data: ``sentences.txt``, the built-in corpus of the character demo.

1,962 English sentences, one per line, written for rgraph (no third-party text, so no
licence beyond rgraph's own).
"""
