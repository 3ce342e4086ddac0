"""The tokenizers, one per modality: SentencePiece text, FSQ image and audio autoencoders (and FSQ itself)."""
