"""A client of the JSON API, and simulated annotators that answer through it.

`FeedbackClient.vote` sends one idempotency key per vote and re-sends the same key on every
retry (connection errors, timeouts, 5xx, 429), so a vote whose answer was lost in transit is
stored once. `annotate` lets any alignlab annotator (`prefer(prompts, a, b) -> bool tensor`, e.g.
`alignlab.lab.annotators.BradleyTerryAnnotator`) judge a pairwise project's items, exactly as a
person would: it sees the responses in the order the server chose and answers A or B.
"""

from __future__ import annotations

import time
import uuid

import httpx

RETRY_STATUS = (429, 500, 502, 503, 504)


class FeedbackAPIError(RuntimeError):
    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message = status, message


class FeedbackClient:
    def __init__(self, base_url: str, token: str, *, retries: int = 20, timeout: float = 10.0,
                 backoff: float = 0.05, max_backoff: float = 1.0):
        self.http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout,
                                 headers={"Authorization": f"Bearer {token}"})
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff
        self.attempts = 0  # requests sent, retries included

    def close(self) -> None:
        self.http.close()

    def _request(self, method: str, url: str, **kwargs) -> httpx.Response:
        delay = self.backoff
        for attempt in range(self.retries + 1):
            self.attempts += 1
            try:
                response = self.http.request(method, url, **kwargs)
            except httpx.TransportError:
                if attempt == self.retries:
                    raise
            else:
                if response.status_code not in RETRY_STATUS or attempt == self.retries:
                    break
            time.sleep(delay)
            delay = min(delay * 2, self.max_backoff)
        if response.status_code >= 400:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            raise FeedbackAPIError(response.status_code, message)
        return response

    def next(self, project: str) -> dict:
        return self._request("GET", f"/api/projects/{project}/next").json()

    def vote(self, project: str, item: int, payload: dict, key: str | None = None) -> dict:
        key = key or uuid.uuid4().hex
        return self._request("POST", f"/api/projects/{project}/items/{item}/vote", json=payload,
                             headers={"Idempotency-Key": key}).json()

    def progress(self, project: str) -> dict:
        return self._request("GET", f"/api/projects/{project}/progress").json()


def annotate(client: FeedbackClient, project: str, annotator, limit: int | None = None) -> int:
    """Judge up to `limit` pairwise items (all that are left with None); returns how many."""
    done = 0
    while limit is None or done < limit:
        shown = client.next(project)
        if shown["done"]:
            break
        texts = [r["text"] for r in shown["responses"]]
        first = bool(annotator.prefer([shown["prompt"]], [texts[0]], [texts[1]])[0])
        client.vote(project, shown["item"], {"choice": "A" if first else "B"})
        done += 1
    return done
