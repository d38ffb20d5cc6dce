;;; gc-roots.scm -- roots of every kind keep their closures, and the
;;; `guix gc' command's queries and deletions: a symlink in gcroots, a
;;; regular file in gcroots, an indirect root (add-indirect-root, a link
;;; in gcroots/auto), a profile-like pair of links under profiles/, a
;;; temporary root of another live session; find-roots, dead-paths,
;;; live-paths, `--list-dead', `--list-live', `--references',
;;; `--referrers', `--derivers', `-R', `-D'/`-d' on live and dead paths,
;;; `-C SIZE', `-F SIZE', a full collection, roots going away (stale
;;; auto links removed), and re-adding a deleted item.
;;;
;;; Every item is made by a session that is closed before any collection,
;;; so no item is a temporary root of a finished session; collections run
;;; in sessions that hold no temporary roots of their own.

(load (string-append (dirname (current-filename)) "/gc-common.scm"))

;;; The items, made by a session of their own.

(define maker (connect))
(define (text name contents . refs)
  (add-text-to-store maker name contents refs))

(define dead-leaf (text "dead-leaf" "dead leaf\n"))
(define dead-mid (text "dead-mid" (string-append "mid " dead-leaf "\n") dead-leaf))
(define dead-top (text "dead-top" (string-append "top " dead-mid "\n") dead-mid))
(define root-leaf (text "root-leaf" "rooted leaf\n"))
(define root-top (text "root-top" (string-append "top " root-leaf "\n") root-leaf))
(define file-root (text "file-root" "rooted by a regular file\n"))
(define ind-leaf (text "indirect-leaf" "indirect leaf\n"))
(define ind-top (text "indirect-top" (string-append "top " ind-leaf "\n") ind-leaf))
(define prof-leaf (text "profile-leaf" "profile leaf\n"))
(define prof-top (text "profile-top" (string-append "top " prof-leaf "\n") prof-leaf))
(define tmp-leaf (text "temp-leaf" "temp leaf\n"))
(define tmp-top (text "temp-top" (string-append "top " tmp-leaf "\n") tmp-leaf))
;; A directory with a file, a symlink and a subdirectory: deleted by
;; moving it to the trash.
(define dir-item
  (add-to-store maker "dead-dir" #t "sha256"
                (make-tree "dead-dir"
                           `(directory
                             ("data" (regular ,(pattern-bytes 5000 7)))
                             ("link" (symlink "data"))
                             ("sub" (directory
                                     ("x" (executable ,(string->utf8 "#!/bin/sh\n")))))))))
;; Dead items of 4 KiB or more each, for `-C 1KiB'.
(define bulk
  (map (lambda (i)
         (text (string-append "bulk-" (number->string i))
               (utf8->string (u8-list->bytevector
                              (map (lambda (b) (+ 97 (modulo b 26)))
                                   (bytevector->u8-list
                                    (pattern-bytes 4096 i)))))))
       (iota 3)))
;; A derivation (never built) whose output is not valid.
(define drv
  (derivation maker "never-built" "/bin/sh" '("-c" "exit 1")
              #:system %system #:sources (list root-leaf)))
(define drv-out (derivation->output-path drv))

(define rooted
  `(("root-top" . ,root-top) ("root-leaf" . ,root-leaf)
    ("file-root" . ,file-root)
    ("indirect-top" . ,ind-top) ("indirect-leaf" . ,ind-leaf)
    ("profile-top" . ,prof-top) ("profile-leaf" . ,prof-leaf)))
(define temp-rooted
  `(("temp-top" . ,tmp-top) ("temp-leaf" . ,tmp-leaf)))
(define dead-chain
  `(("dead-top" . ,dead-top) ("dead-mid" . ,dead-mid) ("dead-leaf" . ,dead-leaf)))
(define others
  `(("dead-dir" . ,dir-item) ("drv" . ,(drv-file drv))
    ,@(map (lambda (p) (cons (basename p) p)) bulk)))

(record! "items"
         (map (match-lambda ((name . path) (cons name path)))
              (append rooted temp-rooted dead-chain others)))

;;; The roots.

;; A symlink in gcroots, as add-permanent-root makes it.
(mkdir-p (gcroots-dir))
(define root-link (string-append (gcroots-dir) "/test-root"))
(symlink root-top root-link)
;; A regular file in gcroots named after a store item.
(define file-root-file (string-append (gcroots-dir) "/" (basename file-root)))
(call-with-output-file file-root-file (const #t))
;; An indirect root: a link outside the state directory, registered.
(define user-link (scratch-file "result"))
(symlink ind-top user-link)
(expect-ok! "add-indirect-root" (lambda () (add-indirect-root maker user-link)))
(record! "auto links" (auto-links))
;; A profile: a link to a generation link to the store.
(define profile-dir (string-append (profiles-dir) "/per-user/tester"))
(mkdir-p profile-dir)
(define profile (string-append profile-dir "/test-profile"))
(define generation (string-append profile-dir "/test-profile-1-link"))
(symlink prof-top generation)
(symlink "test-profile-1-link" profile)

;; A temporary root held by another session that stays open.
(define holder (connect))
(expect-ok! "holder: add-temp-root" (lambda () (add-temp-root holder tmp-top)))

(close-connection maker)

(define s (connect))

;; The maker's temporary roots go away with its session; wait until its
;; items are dead for a session that holds none.
(wait-until "the maker's temporary roots to go"
            (lambda () (member dead-top (dead-paths s))))

;;; What the daemon says is a root, dead, live.

(define roots
  (expect-ok! "find-roots" (lambda () (sort (find-roots s)
                                            (lambda (a b) (string<? (car a) (car b)))))
              #:encode (lambda (pairs)
                         (list->vector
                          (map (match-lambda ((l . t) (vector l t))) pairs)))))
(when roots
  (check! "find-roots: the gcroots link" (equal? (assoc-ref roots root-link) root-top) roots)
  (check! "find-roots: the regular file" (equal? (assoc-ref roots file-root-file) file-root))
  (check! "find-roots: the indirect root, keyed by the user's link"
          (equal? (assoc-ref roots user-link) ind-top))
  (check! "find-roots: the generation link" (equal? (assoc-ref roots generation) prof-top))
  (check! "find-roots: no temporary roots"
          (not (member tmp-top (map cdr roots)))))

(define all-items (append rooted temp-rooted dead-chain others))
(define live-expected (sorted (map cdr (append rooted temp-rooted))))
(define dead-expected (sorted (map cdr (append dead-chain others))))

(define dead (expect-ok! "dead-paths" (lambda () (sorted (dead-paths s)))
                         #:encode paths->json))
(define live (expect-ok! "live-paths" (lambda () (sorted (live-paths s)))
                         #:encode paths->json))
(check! "dead-paths: the unrooted items" (equal? dead dead-expected) dead)
(check! "live-paths: the closures of the roots" (equal? live live-expected) live)

(let ((r (gc-step! "guix gc --list-dead" "--list-dead")))
  (check! "guix gc --list-dead" (and (zero? (gc-status r))
                                     (equal? (gc-stdout-paths r) dead-expected))
          r))
(let ((r (gc-step! "guix gc --list-live" "--list-live")))
  (check! "guix gc --list-live" (and (zero? (gc-status r))
                                     (equal? (gc-stdout-paths r) live-expected))
          r))

;;; Relatives.

(let ((r (gc-step! "guix gc --references" "--references" root-top)))
  (check! "guix gc --references" (equal? (gc-stdout-paths r) (list root-leaf)) r))
(let ((r (gc-step! "guix gc --references, through the gcroots link"
                   "--references" root-link)))
  (check! "guix gc --references, through the gcroots link"
          (equal? (gc-stdout-paths r) (list root-leaf)) r))
(let ((r (gc-step! "guix gc --referrers" "--referrers" root-leaf)))
  (check! "guix gc --referrers"
          (equal? (gc-stdout-paths r) (sorted (list root-top (drv-file drv))))
          r))
(let ((r (gc-step! "guix gc --derivers" "--derivers" drv-out)))
  (check! "guix gc --derivers" (equal? (gc-stdout-paths r) (list (drv-file drv))) r))
(let ((r (gc-step! "guix gc -R" "-R" dead-top)))
  (check! "guix gc -R" (equal? (gc-stdout-paths r) (sorted (map cdr dead-chain))) r))

;;; Deleting specific paths.

(let ((r (gc-step! "guix gc -D live" "-D" root-leaf)))
  (check! "guix gc -D live: refused"
          (and (= 1 (gc-status r))
               (string-contains (gc-stderr r)
                                (string-append "cannot delete path `" root-leaf
                                               "' since it is still alive")))
          r))
(let ((r (gc-step! "guix gc -d live" "-d" tmp-leaf)))
  (check! "guix gc -d live: refused"
          (and (= 1 (gc-status r))
               (string-contains (gc-stderr r) "'-d' as an alias for '--delete' is deprecated")
               (string-contains (gc-stderr r) "since it is still alive"))
          r))
(record-items! "after deleting live paths" s (append rooted temp-rooted))
(check-present! "after deleting live paths" s (append rooted temp-rooted))

;; Deleting the middle of a dead chain deletes it and what refers to it,
;; not what it refers to.
(let ((r (gc-step! "guix gc -D dead-mid" "-D" dead-mid)))
  (check! "guix gc -D dead-mid: ok" (zero? (gc-status r)) r))
(record-items! "after -D dead-mid" s dead-chain)
(check-gone! "after -D dead-mid" s (list-head dead-chain 2))
(check-present! "after -D dead-mid" s (list-tail dead-chain 2))
(let ((r (gc-step! "guix gc -d dead-leaf" "-d" dead-leaf)))
  (check! "guix gc -d dead-leaf: ok" (zero? (gc-status r)) r))
(check-gone! "after -d dead-leaf" s dead-chain)
(let ((r (gc-step! "guix gc -D, already gone" "-D" dead-leaf)))
  (check! "guix gc -D, already gone: ok" (zero? (gc-status r)) r))
(let ((r (gc-step! "guix gc -D drv" "-D" (drv-file drv))))
  (check! "guix gc -D drv: ok" (zero? (gc-status r)) r))

;;; Collections bounded by size.

;; The dead items are now the directory and the bulk items, 4 KiB or more
;; each: asking for 1 KiB deletes exactly one of them.
(define sized `(("dead-dir" . ,dir-item) ,@(map (lambda (p) (cons (basename p) p)) bulk)))
(let* ((r (guix-gc "-C" "1KiB"))
       (deleted (filter (lambda (p) (not (valid-path? s (cdr p)))) sized)))
  (record! "guix gc -C 1KiB"
           `(("status" . ,(gc-status r))
             ("deleted" . ,(length deleted))
             ("stopping" . ,(bool (string-contains
                                      (gc-stderr r)
                                      "deleted or invalidated more than 1024 bytes; stopping")))))
  (check! "guix gc -C 1KiB: one item deleted"
          (and (zero? (gc-status r)) (= 1 (length deleted))) r deleted)
  (check-gone! "guix gc -C 1KiB" s deleted))
(let ((r (guix-gc "-F" "1KiB")))
  (check! "guix gc -F 1KiB: nothing to do"
          (and (zero? (gc-status r))
               (string-contains (gc-stderr r) "nothing to do"))
          r))

;;; A full collection.

;; Which item `-C' deleted was random, so what this collection deletes and
;; frees is not recorded, only what is left.
(define full (guix-gc))
(record! "guix gc"
         `(("status" . ,(gc-status full))
           ("stderr" . ,(list->vector
                         (remove (lambda (l)
                                   (or (string-prefix? "deleting '" l)
                                       (string-contains l ": freed ")))
                                 (gc-stderr-lines (gc-stderr full)))))))
(check! "guix gc: ok" (zero? (gc-status full)) full)
(record-items! "after guix gc" s all-items)
(check-present! "after guix gc" s (append rooted temp-rooted))
(check-gone! "after guix gc" s (append dead-chain others))
(check! "after guix gc: the trash is gone"
        (not (exists? (in-store "trash"))))
(check! "after guix gc: nothing is dead"
        (null? (expect-ok! "dead-paths after guix gc" (lambda () (sorted (dead-paths s)))
                           #:encode paths->json)))

;;; Roots going away.

(close-connection holder)
(wait-until "the holder's temporary roots to go"
            (lambda () (member tmp-top (dead-paths s))))
(delete-file root-link)
(delete-file file-root-file)
(delete-file user-link)
(delete-file profile)
(delete-file generation)
(define dead-at-last
  (expect-ok! "dead-paths without roots" (lambda () (sorted (dead-paths s)))
              #:encode paths->json))
(check! "dead-paths without roots" (equal? dead-at-last live-expected) dead-at-last)
(check! "dead-paths without roots: stale auto link reported"
        (string-contains (or (assoc-ref (cdar %steps) "log") "")
                         "removing stale link from `")
        (car %steps))
(let ((r (gc-step! "guix gc without roots")))
  (check! "guix gc without roots: ok" (zero? (gc-status r)) r))
(record! "auto links at the end" (auto-links))
(check! "the stale auto link is gone" (null? (auto-links)))
(check-gone! "without roots" s (append rooted temp-rooted))
(check! "the store is empty"
        (null? (expect-ok! "query-all-valid-paths at the end"
                           (lambda () (query-all-valid-paths s))
                           #:encode paths->json)))

;;; A deleted item can be added again.

(define again (connect))
(let ((p (expect-ok! "add a deleted item again"
                     (lambda () (add-text-to-store again "dead-leaf" "dead leaf\n" '())))))
  (check! "added again: same path" (equal? p dead-leaf))
  (check! "added again: present" (present? again dead-leaf))
  (check! "added again: contents" (equal? (file-text dead-leaf) "dead leaf\n")))

(step-alive! "alive at the end" s #t)
(finish!)
