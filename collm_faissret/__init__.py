"""collm_faissret: CoLLM-style LLM recommendation with Faiss retrieval."""
__version__ = "0.1.0"
