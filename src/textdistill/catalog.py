"""The registered learners' names and descriptions, readable without importing torch, so that `textdistill list
learners` answers at once. The registry (``learners.DESCRIPTIONS``) stays the truth: a test checks the two agree."""

LEARNERS = {
    "minilm": "all-MiniLM-L6-v2 with a new head, fully fine-tuned (CPU default)",
    "mpnet": "all-mpnet-base-v2 with a new head, fully fine-tuned (110M; fetched on first use)",
    "smollm2-135m": "SmolLM2-135M-Instruct (decoder) as a sequence classifier, fully fine-tuned",
    "smollm2-135m-lora": "SmolLM2-135M-Instruct as a sequence classifier, LoRA rank 8 and the head",
    "minilm-frozen": "linear head on frozen mean-pooled all-MiniLM-L6-v2 vectors (cheap)",
    "mpnet-frozen": "linear head on frozen mean-pooled all-mpnet-base-v2 vectors (768-d)",
    "textcnn-glove": "TextCNN (filters 3/4/5 x 100) over frozen GloVe 50d, from scratch",
    "bilstm-glove": "BiLSTM (128 per direction, mean pooling) over frozen GloVe 50d, from scratch",
    "setfit-minilm": "SetFit: all-MiniLM-L6-v2 fine-tuned on sentence pairs, logistic-regression head",
    "setfit-mpnet": "SetFit: all-mpnet-base-v2 fine-tuned on sentence pairs, logistic-regression head",
}
