"""The one error type of the curation pipeline: bad input the user can fix."""


class CurationError(ValueError):
    """Bad curation input: an empty pool, mismatched embeddings, a malformed manifest, ...

    ``experiments/curate.py`` reports it as ``error: <message>`` without a traceback.
    """
