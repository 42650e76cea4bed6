"""GitHub Enterprise REST v3 contents and commits API over the sandbox's one repo (evidence files)."""

from __future__ import annotations

import base64
import binascii
import time
from urllib.parse import quote, unquote

from include.sandbox import seed
from include.sandbox.core import Sandbox, SandboxError, blob_sha, iso
from include.sandbox.web import Request, Response, json_response, text_response


def _b64_lines(data: bytes) -> str:
    """GitHub wraps base64 content at 60 characters with a trailing newline."""
    raw = base64.b64encode(data).decode()
    return "".join(raw[i:i + 60] + "\n" for i in range(0, len(raw), 60))


def _repo_base(req: Request) -> tuple[str, str]:
    web = f"{req.base_url}/github/{seed.GITHUB_OWNER}/{seed.GITHUB_REPO}"
    api = f"{req.base_url}/github/api/v3/repos/{seed.GITHUB_OWNER}/{seed.GITHUB_REPO}"
    return web, api


def _content_json(req: Request, path: str, data: bytes, ref: str = "master") -> dict:
    web, api = _repo_base(req)
    qpath = quote(path)
    return {
        "type": "file",
        "encoding": "base64",
        "size": len(data),
        "name": path.rsplit("/", 1)[-1],
        "path": path,
        "content": _b64_lines(data),
        "sha": blob_sha(data),
        "url": f"{api}/contents/{qpath}?ref={ref}",
        "html_url": f"{web}/blob/{ref}/{qpath}",
        "git_url": f"{api}/git/blobs/{blob_sha(data)}",
        "download_url": f"{web}/raw/{ref}/{qpath}",
    }


def _commit_json(req: Request, commit: dict) -> dict:
    web, api = _repo_base(req)
    person = {**commit["committer"], "date": iso(commit["time"])}
    return {
        "sha": commit["sha"],
        "url": f"{api}/commits/{commit['sha']}",
        "html_url": f"{web}/commit/{commit['sha']}",
        "commit": {"message": commit["message"], "author": person, "committer": person,
                   "tree": {"sha": commit["sha"][::-1]}},
        "parents": [{"sha": commit["parent"]}] if commit["parent"] else [],
        "files": [{"filename": commit["path"], "status": "added" if commit["created"] else "modified", "sha": commit["blob_sha"]}],
    }


def handle(sb: Sandbox, req: Request) -> Response:
    try:
        return _route(sb, req)
    except SandboxError as exc:
        return json_response({"message": exc.message,
                              "documentation_url": "https://docs.github.com/enterprise/rest"}, exc.status)


def _route(sb: Sandbox, req: Request) -> Response:
    segs = [unquote(s) for s in req.path.split("/") if s]
    if segs[:3] == ["api", "v3", "repos"] and len(segs) >= 5:
        owner, repo, rest = segs[3], segs[4], segs[5:]
        _check_repo(owner, repo)
        return _api(sb, req, rest)
    # Web links (html_url): show the file at a ref as plain text so evidence links resolve.
    if len(segs) >= 4:
        _check_repo(segs[0], segs[1])
        if segs[2] in ("blob", "raw") and req.method == "GET":
            data, _ = sb.file_at("/".join(segs[4:]), segs[3])
            if data is None:
                raise SandboxError(404, "Not Found")
            return text_response(data.decode("utf-8", "replace"))
        if segs[2] == "commit" and req.method == "GET":
            commit = _find_commit(sb, segs[3])
            return text_response(f"commit {commit['sha']}\n\n    {commit['message']}\n\n{commit['path']}\n")
    raise SandboxError(404, "Not Found")


def _check_repo(owner: str, repo: str) -> None:
    if owner.lower() != seed.GITHUB_OWNER.lower() or repo.lower() != seed.GITHUB_REPO.lower():
        raise SandboxError(404, "Not Found")


def _find_commit(sb: Sandbox, ref: str) -> dict:
    if ref in ("master", "HEAD"):
        return sb.repo_commits[-1]
    for commit in sb.repo_commits:
        if len(ref) >= 7 and commit["sha"].startswith(ref):
            return commit
    raise SandboxError(404, f"No commit found for SHA: {ref}")


def _api(sb: Sandbox, req: Request, rest: list[str]) -> Response:
    web, api = _repo_base(req)
    if not rest and req.method == "GET":
        return json_response({"id": 4711, "name": seed.GITHUB_REPO, "full_name": f"{seed.GITHUB_OWNER}/{seed.GITHUB_REPO}",
                              "default_branch": "master", "private": True, "html_url": web, "url": api})
    if rest[:1] == ["branches"] and len(rest) == 2 and req.method == "GET":
        if rest[1] != "master":
            raise SandboxError(404, "Branch not found")
        head = sb.repo_commits[-1]
        return json_response({"name": "master", "protected": False, "commit": _commit_json(req, head)})
    if rest[:1] == ["commits"] and req.method == "GET":
        if len(rest) == 2:
            return json_response(_commit_json(req, _find_commit(sb, rest[1])))
        commits = list(reversed(sb.repo_commits))
        path = req.arg("path")
        if path:
            commits = [c for c in commits if c["path"] == path.strip("/")]
        ref = req.arg("sha")
        if ref and ref != "master":
            head = _find_commit(sb, ref)
            commits = [c for c in commits if c["time"] <= head["time"]]
        per_page = max(1, min(100, int(req.arg("per_page", "30") or 30)))
        page = max(1, int(req.arg("page", "1") or 1))
        return json_response([_commit_json(req, c) for c in commits[(page - 1) * per_page: page * per_page]])
    if rest[:1] == ["contents"] and len(rest) >= 2:
        path = "/".join(rest[1:])
        if req.method == "GET":
            ref = req.arg("ref") or "master"
            data, _ = sb.file_at(path, ref)
            if data is not None:
                return json_response(_content_json(req, path, data, ref))
            # A directory lists its files (without content), as GitHub does.
            tree = sb.tree_at(ref)
            entries = [_content_json(req, p, d, ref) for p, d in sorted(tree.items()) if p.startswith(path + "/")
                       and "/" not in p[len(path) + 1:]]
            if not entries:
                raise SandboxError(404, "Not Found")
            for entry in entries:
                del entry["content"], entry["encoding"]
            return json_response(entries)
        if req.method == "PUT":
            return _put(sb, req, path)
        raise SandboxError(405, f"{req.method} not allowed")
    raise SandboxError(404, "Not Found")


def _put(sb: Sandbox, req: Request, path: str) -> Response:
    body = req.json()
    for key in ("message", "content"):
        if not isinstance(body.get(key), str):
            raise SandboxError(422, f'Invalid request.\n\n"{key}" wasn\'t supplied.')
    branch = body.get("branch") or "master"
    if branch != "master":
        raise SandboxError(404, f"Branch {branch} not found")
    try:
        data = base64.b64decode("".join(body["content"].split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SandboxError(422, "content is not valid Base64") from exc
    current = sb.repo_files.get(path)
    given = body.get("sha")
    if current is None and given:
        raise SandboxError(422, f'Invalid request.\n\n"sha" was supplied but {path} does not exist.')
    if current is not None:
        if not given:
            raise SandboxError(409, f'{path} exists: "sha" wasn\'t supplied.')
        if given != blob_sha(current):
            raise SandboxError(409, f"{path} does not match {given}")
    committer = body.get("committer") if isinstance(body.get("committer"), dict) else None
    commit = sb.commit_file(path, data, body["message"], committer, time.time())
    result = {"content": _content_json(req, path, data), "commit": _commit_json(req, commit)}
    result["commit"]["message"] = commit["message"]
    return json_response(result, 201 if current is None else 200)
