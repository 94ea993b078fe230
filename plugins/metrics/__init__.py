"""Built-in metric plugins: vqa-accuracy, retrieval-recall, classification (mmengine BaseMetric)."""
