"""Hugging Face checkpoints of the Llama and Gemma families: import (sharded), extend to our modalities, export."""
