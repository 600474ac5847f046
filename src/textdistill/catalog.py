"""The registered learners' names and descriptions, readable without importing torch, so that `textdistill list
learners` answers at once. The registry (``learners.DESCRIPTIONS``) stays the truth: a test checks the two agree."""

LEARNERS = {
    "minilm": "all-MiniLM-L6-v2 with a new head, fully fine-tuned (CPU default)",
    "smollm2-135m": "SmolLM2-135M-Instruct (decoder) as a sequence classifier, fully fine-tuned",
    "smollm2-135m-lora": "SmolLM2-135M-Instruct as a sequence classifier, LoRA rank 8 and the head",
    "minilm-frozen": "linear head on frozen mean-pooled all-MiniLM-L6-v2 vectors (cheap)",
    "textcnn-glove": "TextCNN (filters 3/4/5 x 100) over frozen GloVe 50d, from scratch",
    "bilstm-glove": "BiLSTM (128 per direction, mean pooling) over frozen GloVe 50d, from scratch",
}
