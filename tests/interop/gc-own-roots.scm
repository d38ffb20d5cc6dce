;;; gc-own-roots.scm -- temporary roots seen from the session that holds
;;; them and from other sessions, as the Guix client's own tests expect:
;;; a session's own temporary roots do not protect its items from its own
;;; collection requests (its items show in its dead-paths, and it can
;;; delete them), while they do protect them from other sessions; an item
;;; deleted this way and added again is recreated.

(load (string-append (dirname (current-filename)) "/gc-common.scm"))

(define s (connect))
(define x (add-text-to-store s "own-item" "held by its own session\n" '()))
(record! "item" x)
(expect-ok! "add-temp-root own item" (lambda () (add-temp-root s x)))

(define t (connect))
(let ((dead (expect-ok! "dead-paths, another session"
                        (lambda () (sorted (dead-paths t)))
                        #:encode paths->json)))
  (check! "another session's temporary root protects" (not (member x (or dead '())))
          dead))
(let ((r (gc-step! "guix gc -D own item, another session" "-D" x)))
  (check! "guix gc -D own item, another session: refused"
          (and (= 1 (gc-status r)) (string-contains (gc-stderr r) "still alive"))
          r))
(check! "still there" (present? s x))

;; The C++ daemon's session process takes its own temporary roots file
;; for that of a dead process (its lock does not conflict with itself) and
;; says so; the message is recorded apart from the answer.
(define stale-message "removing stale temporary roots file `")
(let* ((log (open-output-string))
       (o (parameterize ((current-build-output-port log))
            (attempt (lambda () (sorted (dead-paths s))))))
       (text (get-output-string log))
       (dead (and (ok? o) (ok-value o))))
  (record! "dead-paths, own session"
           (append (outcome->json o paths->json)
                   `(("log" . ,(string-join
                                (remove (cut string-prefix? stale-message <>)
                                        (lines text))
                                "\n")))))
  (record! "dead-paths, own session: stale file message"
           (bool (string-contains text stale-message)))
  (check! "dead-paths, own session" (ok? o) o)
  (check! "own temporary roots do not protect from the own session"
          (member x (or dead '())) dead))
(let ((deleted (expect-ok! "delete-paths, own session"
                           (lambda ()
                             (call-with-values (lambda () (delete-paths s (list x)))
                               (lambda (paths freed) paths)))
                           #:encode paths->json)))
  (check! "delete-paths, own session: deleted" (equal? deleted (list x)) deleted))
(record-items! "after delete-paths" s `(("own-item" . ,x)))
(check-gone! "after delete-paths" s `(("own-item" . ,x)))

(let ((again (expect-ok! "add again after delete-paths"
                         (lambda ()
                           (add-text-to-store s "own-item" "held by its own session\n" '())))))
  (check! "add again: same path" (equal? again x))
  (check! "add again: recreated" (present? s x)))

(step-alive! "alive at the end" s #t)
(step-alive! "other session alive at the end" t #t)
(finish!)
