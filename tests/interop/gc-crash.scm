;;; gc-crash.scm -- the store side of the crash scenario, where the daemon
;;; is killed with SIGKILL in the middle of a collection of many dead paths
;;; and restarted on the same store.
;;;
;;; Usage: gc-crash.scm TRANSCRIPT make DEAD-COUNT
;;;        gc-crash.scm TRANSCRIPT check
;;;
;;; `make' adds DEAD-COUNT unrooted items (text items, and every tenth a
;;; directory with a few files) and a rooted closure (a chain of items, the
;;; top one held by a symlink in gcroots); it records the rooted items.
;;; `check', after the restart: every valid path exists and its files
;;; match its registered NAR hash, the rooted closure is intact, `guix gc
;;; --verify=contents' finds nothing wrong, and a new collection finishes,
;;; leaving exactly the rooted closure and no trash.

(load (string-append (dirname (current-filename)) "/gc-common.scm"))

(define (make dead-count)
  (define s (connect))
  (define rooted
    (let loop ((i 0) (acc '()))
      (if (= i 20)
          (reverse acc)
          (loop (+ i 1)
                (cons (add-text-to-store s (string-append "rooted-" (number->string i))
                                         (string-append "rooted " (number->string i)
                                                        (if (null? acc) "" (car acc)) "\n")
                                         (if (null? acc) '() (list (car acc))))
                      acc)))))
  (mkdir-p (gcroots-dir))
  (symlink (last rooted) (string-append (gcroots-dir) "/top"))
  (let loop ((i 0))
    (when (< i dead-count)
      (let ((n (number->string i)))
        (if (zero? (modulo i 10))
            (add-to-store s (string-append "dead-dir-" n) #t "sha256"
                          (make-tree "dead-dir"
                                     `(directory
                                       ("a" (regular ,(pattern-bytes 2000 i)))
                                       ("b" (regular ,(string->utf8 n)))
                                       ("sub" (directory
                                               ("c" (executable ,(string->utf8 n))))))))
            (add-text-to-store s (string-append "dead-" n)
                               (string-append "dead item " n "\n") '())))
      (loop (+ i 1))))
  (record! "rooted" (list->vector rooted))
  (close-connection s)
  (finish!))

(define (check)
  (define s (connect))
  (define valid
    (expect-ok! "query-all-valid-paths after the restart"
                (lambda () (query-all-valid-paths s))
                #:encode (lambda (paths) (length paths))))
  (define top (readlink (string-append (gcroots-dir) "/top")))
  (define rooted (sorted (requisites s (list top))))
  (let ((broken (remove (cut present? s <>) (or valid '()))))
    (record! "broken valid paths" (list->vector broken))
    (check! "every valid path is intact" (null? broken) broken))
  (check! "the rooted closure is intact"
          (and (= 20 (length rooted)) (every (cut present? s <>) rooted))
          rooted)
  (let ((r (gc-step! "guix gc --verify=contents after the restart" "--verify=contents")))
    (check! "guix gc --verify=contents after the restart: ok" (zero? (gc-status r)) r))
  (let ((r (gc-step! "guix gc after the restart")))
    (check! "guix gc after the restart: ok" (zero? (gc-status r)) r))
  (let ((left (expect-ok! "valid paths after the new collection"
                          (lambda () (sorted (query-all-valid-paths s)))
                          #:encode paths->json)))
    (check! "only the rooted closure is left" (equal? left rooted) left))
  (let ((entries (scandir (%store-prefix)
                          (lambda (e) (not (member e '("." ".." ".links")))))))
    (record! "store entries after the new collection" (length entries))
    (check! "no leftovers in the store directory"
            (equal? (sort entries string<?) (sort (map basename rooted) string<?))
            entries))
  (finish!))

(match (script-arguments)
  (("make" count) (make (string->number count)))
  (("check") (check)))
