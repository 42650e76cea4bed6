"""GitHub Enterprise REST v3 contents and commits API over the sandbox's one repo (evidence files)."""

from __future__ import annotations

import base64
import binascii
import time
from urllib.parse import quote, unquote

from include.sandbox import seed
from include.sandbox.core import Sandbox, SandboxError, blob_sha, iso
from include.sandbox.routing import ANY, Route, dispatch
from include.sandbox.web import Request, Response, json_response, text_response


def _b64_lines(data: bytes) -> str:
    """GitHub wraps base64 content at 60 characters with a trailing newline."""
    raw = base64.b64encode(data).decode()
    return "".join(raw[i:i + 60] + "\n" for i in range(0, len(raw), 60))


def _repo_base(req: Request) -> tuple[str, str]:
    web = f"{req.base_url}/github/{seed.GITHUB_OWNER}/{seed.GITHUB_REPO}"
    api = f"{req.base_url}/github/api/v3/repos/{seed.GITHUB_OWNER}/{seed.GITHUB_REPO}"
    return web, api


#: GitHub serves file contents inline up to 1 MB; above that `content` is "" and `encoding` "none"
#: (the caller reads the blob through /git/blobs/{sha}).
INLINE_LIMIT = 1024 * 1024
BOT_LOGIN = "conductors-bot"


def _user(req: Request, login: str = BOT_LOGIN, user_id: int = 5150) -> dict:
    """simple-user of the GHES description."""
    api = f"{req.base_url}/github/api/v3/users/{login}"
    return {
        "login": login, "id": user_id, "node_id": base64.b64encode(f"04:User{user_id}".encode()).decode(),
        "avatar_url": f"{req.base_url}/github/avatars/u/{user_id}", "gravatar_id": "",
        "url": api, "html_url": f"{req.base_url}/github/{login}",
        "followers_url": f"{api}/followers", "following_url": f"{api}/following{{/other_user}}",
        "gists_url": f"{api}/gists{{/gist_id}}", "starred_url": f"{api}/starred{{/owner}}{{/repo}}",
        "subscriptions_url": f"{api}/subscriptions", "organizations_url": f"{api}/orgs",
        "repos_url": f"{api}/repos", "events_url": f"{api}/events{{/privacy}}",
        "received_events_url": f"{api}/received_events", "type": "User" if login == BOT_LOGIN else "Organization",
        "site_admin": False,
    }


def _private_user(req: Request) -> dict:
    """private-user (GET /user) for the token's account."""
    return {
        **_user(req), "name": "Conductors Automation", "company": "Conductors", "blog": "", "location": None,
        "email": "conductors@example.com", "hireable": None, "bio": None, "public_repos": 0, "public_gists": 0,
        "followers": 0, "following": 0, "created_at": "2019-03-01T09:00:00Z", "updated_at": "2026-01-05T09:00:00Z",
        "private_gists": 0, "total_private_repos": 1, "owned_private_repos": 0, "disk_usage": 0, "collaborators": 0,
        "two_factor_authentication": True, "user_view_type": "private",
    }


def _repo_json(sb: Sandbox, req: Request) -> dict:
    """full-repository of the GHES description."""
    web, api = _repo_base(req)
    owner = _user(req, seed.GITHUB_OWNER, 880)
    head = sb.repo_commits[-1]
    git_host = req.base_url.split("://", 1)[-1]
    urls = {
        "archive_url": "{archive_format}{/ref}", "assignees_url": "assignees{/user}", "blobs_url": "git/blobs{/sha}",
        "branches_url": "branches{/branch}", "collaborators_url": "collaborators{/collaborator}",
        "comments_url": "comments{/number}", "commits_url": "commits{/sha}", "compare_url": "compare/{base}...{head}",
        "contents_url": "contents/{+path}", "contributors_url": "contributors", "deployments_url": "deployments",
        "downloads_url": "downloads", "events_url": "events", "forks_url": "forks",
        "git_commits_url": "git/commits{/sha}", "git_refs_url": "git/refs{/sha}", "git_tags_url": "git/tags{/sha}",
        "hooks_url": "hooks", "issue_comment_url": "issues/comments{/number}", "issue_events_url": "issues/events{/number}",
        "issues_url": "issues{/number}", "keys_url": "keys{/key_id}", "labels_url": "labels{/name}",
        "languages_url": "languages", "merges_url": "merges", "milestones_url": "milestones{/number}",
        "notifications_url": "notifications{?since,all,participating}", "pulls_url": "pulls{/number}",
        "releases_url": "releases{/id}", "stargazers_url": "stargazers", "statuses_url": "statuses/{sha}",
        "subscribers_url": "subscribers", "subscription_url": "subscription", "tags_url": "tags",
        "teams_url": "teams", "trees_url": "git/trees{/sha}",
    }
    return {
        "id": 4711, "node_id": "MDEwOlJlcG9zaXRvcnk0NzEx", "name": seed.GITHUB_REPO,
        "full_name": f"{seed.GITHUB_OWNER}/{seed.GITHUB_REPO}", "owner": owner, "private": True, "html_url": web,
        "description": "Conductors team notes and train evidence", "fork": False, "url": api,
        **{key: f"{api}/{tail}" for key, tail in urls.items()},
        "clone_url": f"{web}.git", "git_url": f"git://{git_host}/{seed.GITHUB_OWNER}/{seed.GITHUB_REPO}.git",
        "ssh_url": f"git@{git_host}:{seed.GITHUB_OWNER}/{seed.GITHUB_REPO}.git", "svn_url": web, "mirror_url": None,
        "homepage": None, "language": None, "forks": 0, "forks_count": 0, "stargazers_count": 0, "watchers": 0,
        "watchers_count": 0, "size": sum(len(d) for d in sb.repo_files.values()) // 1024, "default_branch": "master",
        "open_issues": 0, "open_issues_count": 0, "is_template": False, "topics": [], "has_issues": True,
        "has_projects": False, "has_wiki": False, "has_pages": False, "has_downloads": True,
        "has_discussions": False, "archived": False, "disabled": False, "visibility": "private",
        "pushed_at": iso(head["time"]), "created_at": "2019-03-01T09:00:00Z", "updated_at": iso(head["time"]),
        "permissions": {"admin": False, "maintain": False, "push": True, "triage": True, "pull": True},
        "allow_rebase_merge": True, "allow_squash_merge": True, "allow_merge_commit": True,
        "license": None, "network_count": 0, "subscribers_count": 3,
    }


def _content_json(req: Request, path: str, data: bytes, ref: str = "master", *, inline: bool = True) -> dict:
    """content-file of the GHES description (no inline content above INLINE_LIMIT, as GitHub does)."""
    web, api = _repo_base(req)
    qpath = quote(path)
    url = f"{api}/contents/{qpath}?ref={ref}"
    git_url = f"{api}/git/blobs/{blob_sha(data)}"
    html_url = f"{web}/blob/{ref}/{qpath}"
    small = len(data) <= INLINE_LIMIT
    out = {
        "type": "file",
        "encoding": "base64" if small else "none",
        "size": len(data),
        "name": path.rsplit("/", 1)[-1],
        "path": path,
        "content": _b64_lines(data) if small else "",
        "sha": blob_sha(data),
        "url": url,
        "html_url": html_url,
        "git_url": git_url,
        "download_url": f"{web}/raw/{ref}/{qpath}",
        "_links": {"self": url, "git": git_url, "html": html_url},
    }
    if not inline:
        del out["content"], out["encoding"]
    return out


def _person(commit: dict) -> dict:
    return {**commit["committer"], "date": iso(commit["time"])}


def _commit_json(req: Request, commit: dict) -> dict:
    """commit of the GHES description (GET /commits and /commits/{ref})."""
    web, api = _repo_base(req)
    person = _person(commit)
    blob = f"{web}/blob/{commit['sha']}/{quote(commit['path'])}"
    return {
        "sha": commit["sha"],
        "node_id": base64.b64encode(f"06:Commit4711:{commit['sha']}".encode()).decode(),
        "url": f"{api}/commits/{commit['sha']}",
        "html_url": f"{web}/commit/{commit['sha']}",
        "comments_url": f"{api}/commits/{commit['sha']}/comments",
        "commit": {"url": f"{api}/git/commits/{commit['sha']}", "message": commit["message"], "author": person,
                   "committer": person, "comment_count": 0,
                   "tree": {"sha": commit["sha"][::-1], "url": f"{api}/git/trees/{commit['sha'][::-1]}"},
                   "verification": {"verified": False, "reason": "unsigned", "signature": None, "payload": None,
                                    "verified_at": None}},
        "author": _user(req),
        "committer": _user(req),
        "parents": [{"sha": commit["parent"], "url": f"{api}/commits/{commit['parent']}",
                     "html_url": f"{web}/commit/{commit['parent']}"}] if commit["parent"] else [],
        "stats": {"additions": commit["content"].count("\n"), "deletions": 0, "total": commit["content"].count("\n")},
        "files": [{"sha": commit["blob_sha"], "filename": commit["path"],
                   "status": "added" if commit["created"] else "modified",
                   "additions": commit["content"].count("\n"), "deletions": 0,
                   "changes": commit["content"].count("\n"), "blob_url": blob,
                   "raw_url": f"{web}/raw/{commit['sha']}/{quote(commit['path'])}",
                   "contents_url": f"{api}/contents/{quote(commit['path'])}?ref={commit['sha']}"}],
    }


def _file_commit_json(req: Request, path: str, data: bytes, commit: dict) -> dict:
    """file-commit of the GHES description (the PUT contents answer)."""
    full = _commit_json(req, commit)
    content = _content_json(req, path, data, inline=False)
    return {
        "content": content,
        "commit": {
            "sha": full["sha"], "node_id": full["node_id"], "url": full["commit"]["url"],
            "html_url": full["html_url"], "author": full["commit"]["author"],
            "committer": full["commit"]["committer"], "message": commit["message"], "tree": full["commit"]["tree"],
            "parents": full["parents"], "verification": full["commit"]["verification"],
        },
    }


def handle(sb: Sandbox, req: Request) -> Response:
    try:
        return _route(sb, req)
    except SandboxError as exc:
        return json_response({"message": exc.message,
                              "documentation_url": "https://docs.github.com/enterprise/rest"}, exc.status)


def _route(sb: Sandbox, req: Request) -> Response:
    segs = [unquote(s) for s in req.path.split("/") if s]
    if segs == ["api", "v3", "user"] and req.method == "GET":
        return json_response(_private_user(req))
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
    resp = dispatch(API_ROUTES, req.method, rest, sb, req)
    if resp is None:
        raise SandboxError(404, "Not Found")
    return resp


def _repository(sb: Sandbox, req: Request) -> Response:
    return json_response(_repo_json(sb, req))


def _blob(sb: Sandbox, req: Request, sha: str) -> Response:
    _, api = _repo_base(req)
    data = next((d for c in reversed(sb.repo_commits) for d in c["tree"].values() if blob_sha(d) == sha), None)
    if data is None:
        raise SandboxError(404, "Not Found")
    return json_response({"sha": sha, "node_id": base64.b64encode(f"04:Blob4711:{sha}".encode()).decode(),
                          "size": len(data), "url": f"{api}/git/blobs/{sha}", "content": _b64_lines(data),
                          "encoding": "base64"})


def _branch(sb: Sandbox, req: Request, branch: str) -> Response:
    if branch != "master":
        raise SandboxError(404, "Branch not found")
    head = sb.repo_commits[-1]
    return json_response({"name": "master", "protected": False, "commit": _commit_json(req, head)})


def _commit(sb: Sandbox, req: Request, ref: str) -> Response:
    return json_response(_commit_json(req, _find_commit(sb, ref)))


def _commits(sb: Sandbox, req: Request, ignored: list[str]) -> Response:
    """Newest first, filtered by `path` and `sha` (a ref), paged by `per_page` and `page`."""
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


def _contents(sb: Sandbox, req: Request, parts: list[str]) -> Response:
    """A file at `ref`, or a directory's files (without content), as GitHub does."""
    path = "/".join(parts)
    ref = req.arg("ref") or "master"
    data, _ = sb.file_at(path, ref)
    if data is not None:
        return json_response(_content_json(req, path, data, ref))
    tree = sb.tree_at(ref)
    entries = [_content_json(req, p, d, ref) for p, d in sorted(tree.items()) if p.startswith(path + "/")
               and "/" not in p[len(path) + 1:]]
    if not entries:
        raise SandboxError(404, "Not Found")
    for entry in entries:
        del entry["content"], entry["encoding"]
        entry["type"] = "file"
    return json_response(entries)


def _contents_put(sb: Sandbox, req: Request, parts: list[str]) -> Response:
    return _put(sb, req, "/".join(parts))


def _not_allowed(sb: Sandbox, req: Request, **_: object) -> Response:
    raise SandboxError(405, f"{req.method} not allowed")


#: The repository's resources, per path below `/api/v3/repos/{owner}/{repo}` (API.md "GitHub Enterprise").
API_ROUTES: tuple[Route, ...] = (
    ("GET", "", _repository),
    ("GET", "git/blobs/{sha}", _blob),
    ("GET", "branches/{branch}", _branch),
    ("GET", "commits/{ref}", _commit),
    # `commits` and any deeper path but one ref list the commits, as the sandbox always has.
    ("GET", "commits/{ignored*}", _commits),
    ("GET", "contents/{parts+}", _contents),
    ("PUT", "contents/{parts+}", _contents_put),
    (ANY, "contents/{parts+}", _not_allowed),
)


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
            # GitHub answers a PUT over an existing file without "sha" with 422 (validation failed).
            raise SandboxError(422, 'Invalid request.\n\n"sha" wasn\'t supplied.')
        if given != blob_sha(current):
            raise SandboxError(409, f"{path} does not match {given}")
    committer = body.get("committer") if isinstance(body.get("committer"), dict) else None
    commit = sb.commit_file(path, data, body["message"], committer, time.time())
    return json_response(_file_commit_json(req, path, data, commit), 201 if current is None else 200)
