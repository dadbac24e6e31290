"""vLLM's media connector with errors that name the request's file (issue 25).

vLLM hands video loaders only the bytes of a `video_url` part, and its server strips directories from error messages
(`entrypoints/serve/exception_handling/utils.py`, `sanitize_message`). So a request with several clips, one of them
unreadable, got an error that said what was wrong but not with which clip. This connector is vLLM's own
`MediaConnector` with each fetch wrapped: an error reading or decoding a `video_url` / `image_url` part becomes a
400 `VLLMValidationError` whose message starts with the part and the file's name ("video_url 'clip.mp4': ...").
A missing local file is such an error too (vLLM answers 500 with the path hidden otherwise).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import urllib.parse

from vllm.exceptions import VLLMError, VLLMValidationError
from vllm.multimodal.media import MEDIA_CONNECTOR_REGISTRY, MediaConnector

CONNECTOR = "internvideo3"


def describe_url(url: str) -> str:
    """The name an error gives a media URL: the file name of a `file://` or `http(s)://` URL (directories are
    stripped by vLLM's server anyway), or "a data URL (N characters)"."""
    if url[:5].lower() == "data:":
        return f"a data URL ({len(url):,} characters)"
    path = urllib.parse.unquote(urllib.parse.urlsplit(url).path)
    return repr(posixpath.basename(path) or url[:100])


@contextlib.contextmanager
def _naming(part: str, url: str):
    try:
        yield
    except VLLMError:  # already classified by vLLM (fetch failures carry their URL and status)
        raise
    except ValueError as error:
        raise VLLMValidationError(f"{part} {describe_url(url)}: {error}", parameter=part) from error
    except OSError as error:
        if not url.lower().startswith("file:"):  # network errors stay vLLM's (retryable, 5xx)
            raise
        raise VLLMValidationError(f"{part} {describe_url(url)}: {error.strerror or error}", parameter=part) from error


class InternVideo3MediaConnector(MediaConnector):
    """`vllm.multimodal.media.MediaConnector` whose video and image fetches name their file when they fail.

    Raises:
        VLLMValidationError: (HTTP 400, `param` "video_url" / "image_url") a part that cannot be read or decoded:
            "<part> '<file name>': <reason>"; vLLM's own classified errors pass unchanged.
    """

    def fetch_video(self, video_url: str, **kwargs):
        with _naming("video_url", video_url):
            return super().fetch_video(video_url, **kwargs)

    async def fetch_video_async(self, video_url: str, **kwargs):
        with _naming("video_url", video_url):
            return await super().fetch_video_async(video_url, **kwargs)

    def fetch_image(self, image_url: str, **kwargs):
        with _naming("image_url", image_url):
            return super().fetch_image(image_url, **kwargs)

    async def fetch_image_async(self, image_url: str, **kwargs):
        with _naming("image_url", image_url):
            return await super().fetch_image_async(image_url, **kwargs)


def register_media_connector() -> None:
    """Register `InternVideo3MediaConnector` as vLLM media connector "internvideo3" and make it the default.

    vLLM reads the connector's name from `VLLM_MEDIA_CONNECTOR` at each request ("http", vLLM's own, when unset);
    it is set here only when unset, so a connector the user chose stays. The connector differs from vLLM's only in
    its error messages, so other models served from the same installation are unaffected. Idempotent."""
    MEDIA_CONNECTOR_REGISTRY.register(CONNECTOR)(InternVideo3MediaConnector)
    os.environ.setdefault("VLLM_MEDIA_CONNECTOR", CONNECTOR)
