from django.urls import path, re_path

from proxy import api

urlpatterns = [
    path("chat/completions", api.chat_completions),
    path("completions", api.completions),
    path("embeddings", api.embeddings),
    path("rerank", api.rerank),
    path("score", api.score),
    path("responses", api.responses),
    path("models", api.models),
    re_path(r"^(?P<path>.*)$", api.not_found),
]
