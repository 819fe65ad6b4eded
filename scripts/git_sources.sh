# shellcheck shell=bash
# Git sources for the setup scripts (setup_a1111.sh, setup_a1111_extensions.sh), sourced by both.
# The caller sets SOURCES (A1111_SOURCES, may be empty) and DEST, and defines log and die.

has_commit() { # GIT_DIR_OR_WORKTREE COMMIT
	git --git-dir="$1" rev-parse -q --verify "$2^{commit}" >/dev/null 2>&1 ||
		git -C "$1" rev-parse -q --verify "$2^{commit}" >/dev/null 2>&1
}

# A git repository holding COMMIT: from SOURCES when it has one (OWNER+NAME/repo, OWNER+NAME, NAME, or a
# fork's *+NAME/repo), else a bare clone from GitHub under DEST/sources.
source_of() { # NAME OWNER/REPO COMMIT
	local name="$1" slug="$2" commit="$3" candidate
	if [[ -n "$SOURCES" ]]; then
		for candidate in "$SOURCES/${slug/\//+}/repo" "$SOURCES/${slug/\//+}" "$SOURCES/$name" "$SOURCES"/*+"$name"/repo; do
			if [[ -e "$candidate" ]] && has_commit "$candidate" "$commit"; then
				echo "$candidate"
				return
			fi
		done
	fi
	candidate="$DEST/sources/${slug/\//+}.git"
	if [[ ! -d "$candidate" ]]; then
		log "cloning https://github.com/$slug"
		git clone -q --bare "https://github.com/$slug.git" "$candidate" >&2
	fi
	has_commit "$candidate" "$commit" || die "$slug has no commit $commit"
	echo "$candidate"
}
