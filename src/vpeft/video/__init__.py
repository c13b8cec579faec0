"""The video action-recognition track (catalog §3.3, §5.3, §6.3).

Everything video lives here and is imported only by video suites, so the image track never loads
decord or PyAV:

* `reader` / `writer` — decord is the only reader of every video path; PyAV writes (generated clips,
  webm -> mp4 and short-side resizing during preparation).
* `sampling`, `transforms`, `annotations`, `dataset` — the loader: segment-based (SSv2) or dense
  (K400 / HMDB51) frame sampling, train crops, multi-view test (clips x crops, averaged by the engine).
* `layout` — the `video-csv` data layout (`train_dataset` / `eval_dataset` for the engine).
* `synthetic` — the embedded `video-mini` suite: generated clips whose classes need temporal order.
* `models` — VideoMAE ViT-B, Video Swin-B and the tiny demo video ViT, registered with timm;
  checkpoint layouts (official VideoMAE / Video Swin, torchvision `swin3d_b`, Hugging Face VideoMAE)
  are converted on load.
* `prepare` — SSv2 / HMDB51 / K400 preparation, validation and checksummed manifests.
"""
