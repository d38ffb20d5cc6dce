;;; gc-common.scm -- helpers loaded by the garbage-collection scenario
;;; scripts (gc-*.scm), on top of build-common.scm (and so common.scm).
;;;
;;; They run the real `guix gc' command of the Guix root against the daemon
;;; under test (it inherits the script's environment: the relocated store,
;;; the state directory and GUIX_DAEMON_SOCKET), make GC roots of every
;;; kind, and check store items on disk.
;;;
;;; Keeps true: what a step records depends only on the daemon's behaviour
;;; and the script: the order in which a collection deletes paths is
;;; random, so deletion lines are recorded sorted and without their
;;; progress prefix (`[12%] ' or `[1.2 KiB] '); nothing about free disk
;;; space is ever recorded; every `guix gc' run has its exit status, its
;;; standard output and its (normalized) standard error recorded.

(load (string-append (dirname (current-filename)) "/build-common.scm"))

;;; Directories of the daemon's state.

(define (state-dir)
  (or (getenv "GUIX_STATE_DIRECTORY") (error "GUIX_STATE_DIRECTORY is not set")))

(define (gcroots-dir) (string-append (state-dir) "/gcroots"))
(define (auto-dir) (string-append (gcroots-dir) "/auto"))
(define (profiles-dir) (string-append (state-dir) "/profiles"))

(define (mkdir-p dir)
  (unless (file-exists? dir)
    (mkdir-p (dirname dir))
    (mkdir dir #o755)))

(define (auto-links)
  "The links in gcroots/auto, as (NAME . TARGET), sorted by name."
  (if (file-exists? (auto-dir))
      (map (lambda (e) (cons e (readlink (string-append (auto-dir) "/" e))))
           (scandir (auto-dir) (lambda (e) (not (member e '("." ".."))))
                    string<?))
      '()))

;;; Running `guix gc'.

(define (lines text)
  "The non-empty lines of TEXT."
  (filter (negate string-null?) (string-split (or text "") #\newline)))

(define (guix-gc . args)
  "Run `guix gc ARGS...'; return (STATUS STDOUT STDERR)."
  (let ((out (scratch-file "gc-stdout"))
        (err (scratch-file "gc-stderr")))
    (let ((st (apply system* "/bin/sh" "-c"
                     "o=$1; e=$2; shift 2; exec guix gc \"$@\" >\"$o\" 2>\"$e\""
                     "sh" out err args)))
      (list (or (status:exit-val st) 128)
            (or (file-text out) "")
            (or (file-text err) "")))))

(define (normalize-gc-line line)
  "LINE without the progress prefix of a deletion line."
  (let ((m (string-match "^\\[[^]]*\\] (deleting '.*')$" line)))
    (if m (match:substring m 1) line)))

(define (gc-stderr-lines text)
  "The lines of TEXT, normalized; deletion lines (whose order is random)
sorted after the others."
  (let-values (((deletions others)
                (partition (cut string-prefix? "deleting '" <>)
                           (map normalize-gc-line (lines text)))))
    (append others (sort deletions string<?))))

(define (gc-result->json result)
  (match result
    ((status out err)
     `(("status" . ,status)
       ("stdout" . ,(list->vector (lines out)))
       ("stderr" . ,(list->vector (gc-stderr-lines err)))))))

(define (gc-step! label . args)
  "Run `guix gc ARGS...', record it under LABEL and return (STATUS STDOUT
STDERR)."
  (let ((result (apply guix-gc args)))
    (when %trace?
      (format (current-error-port) "~a: ~s~%" label result))
    (record! label (gc-result->json result))
    result))

(define (gc-status result) (first result))
(define (gc-stdout result) (second result))
(define (gc-stderr result) (third result))

(define (gc-stdout-paths result)
  "The store paths `guix gc' printed, sorted."
  (sort (lines (gc-stdout result)) string<?))

;;; Store items and their files.

(define (bool x) (if x #t #f))

(define (exists? file)
  (if (false-if-exception (lstat file)) #t #f))

(define (item-state store path)
  "Whether PATH is valid and whether its file exists on disk."
  `(("valid" . ,(valid-path? store path))
    ("exists" . ,(exists? path))))

(define (present? store path)
  "PATH is valid, exists, and hashes to its registered NAR hash."
  (and (valid-path? store path)
       (exists? path)
       (bytevector=? (path-info-hash (query-path-info store path))
                     (sha256 (nar-bytes path)))))

(define (gone? store path)
  (and (not (valid-path? store path))
       (not (exists? path))))

(define (record-items! label store alist)
  "Record the state of each (NAME . PATH) of ALIST under LABEL."
  (record! label
           (map (match-lambda
                  ((name . path) (cons name (item-state store path))))
                alist)))

(define (check-present! label store alist)
  (for-each (match-lambda
              ((name . path)
               (check! (string-append label ": " name " kept")
                       (present? store path) path)))
            alist))

(define (check-gone! label store alist)
  (for-each (match-lambda
              ((name . path)
               (check! (string-append label ": " name " deleted")
                       (gone? store path) path)))
            alist))

(define (query-all-valid-paths store)
  (raw-operation store 23 (const #t) read-store-path-list))

(define (sorted paths) (sort paths string<?))

(define (subset? a b)
  (every (cut member <> b) a))

(define (wait-until what thunk)
  "Call THUNK every 100 ms until it returns true, for at most 20 s; check
that it did.  A daemon error ends the wait (and is a failed check)."
  (let loop ((n 200))
    (let ((o (attempt thunk)))
      (cond ((not (ok? o))
             (check! (string-append "waited for " what) #f o)
             #f)
            ((ok-value o) #t)
            ((zero? n) (check! (string-append "waited for " what) #f) #f)
            (else (usleep 100000) (loop (- n 1)))))))
