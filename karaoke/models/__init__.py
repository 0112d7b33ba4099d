"""Models with learned weights: the paper's mask DNN (`karaoke.models.dnn`)."""
