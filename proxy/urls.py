from django.urls import path, re_path

from batch import views as batch
from proxy import api

urlpatterns = [
    path("chat/completions", api.chat_completions),
    path("completions", api.completions),
    path("embeddings", api.embeddings),
    path("rerank", api.rerank),
    path("score", api.score),
    path("responses", api.responses),
    path("models", api.models),
    path("files", batch.files),
    path("files/<str:file_id>", batch.file_detail),
    path("files/<str:file_id>/content", batch.file_content),
    path("batches", batch.batches),
    path("batches/<str:batch_id>", batch.batch_detail),
    path("batches/<str:batch_id>/cancel", batch.batch_cancel),
    re_path(r"^(?P<path>.*)$", api.not_found),
]
