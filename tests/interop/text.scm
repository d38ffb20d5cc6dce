;;; text.scm -- add-text-to-store: text and binary contents, references,
;;; idempotence, names a daemon refuses, references that are not valid or
;;; not in the store, and the items on disk.

(load (string-append (dirname (current-filename)) "/common.scm"))

(define s (connect))

(define* (add-text! label store name contents refs #:key (expect-path? #t))
  "Add a text item; record its path, info and files; check the path against
the client's own computation.  Return the path or #f."
  (let ((path (expect-ok! label
                          (lambda ()
                            (if (string? contents)
                                (add-text-to-store store name contents refs)
                                (add-data-to-store store name contents refs))))))
    (when path
      (when expect-path?
        (check! (string-append label ": path")
                (equal? path (text-store-path name contents refs))
                path))
      (let ((info (expect-ok! (string-append label ": query-path-info")
                              (lambda () (query-path-info store path))
                              #:encode path-info->json)))
        (when info
          (check-path-info! label info path)
          (check! (string-append label ": references")
                  (equal? (path-info-references info)
                          (sort (delete-duplicates refs) string<?))
                  (path-info-references info))))
      (record! (string-append label ": files") (listing path)))
    path))

(define plain (add-text! "plain" s "plain" "plain text\n" '()))
(define empty (add-text! "empty contents" s "empty" "" '()))
(define utf8 (add-text! "UTF-8 contents" s "utf8" "\u00e9t\u00e9 \u2603\n" '()))
(define binary
  (add-text! "binary contents" s "binary"
             (u8-list->bytevector (iota 256)) '()))
(define large
  (add-text! "1 MiB of contents" s "large"
             (pattern-bytes (* 1024 1024) 3) '()))
(define one-ref (add-text! "one reference" s "one-ref" "-> plain\n"
                           (list plain)))
(define refs-unsorted
  (add-text! "references given unsorted" s "refs" "several\n"
             (list utf8 plain empty binary)))
(define self-named
  ;; Contents that mention another item's path without declaring it.
  (add-text! "undeclared path in contents" s "mentions"
             (string-append "see " plain "\n") '()))

(check! "referrers of plain"
        (equal? (expect-ok! "referrers plain" (lambda () (referrers s plain))
                            #:encode paths->json)
                (sort (list one-ref refs-unsorted) string<?)))

;;; The same items again on another connection (the client memoises
;;; add-text-to-store per connection).

(let ((s2 (connect)))
  (add-text! "again: plain" s2 "plain" "plain text\n" '())
  (add-text! "again: references" s2 "refs" "several\n"
             (list plain empty binary utf8))
  (close-connection s2))

;;; Refusals that leave the session usable.

(define (refused! label thunk text)
  (expect-error! label thunk text)
  (step-alive! (string-append "alive after " label) s #t))

(refused! "name with a slash"
          (lambda () (add-text-to-store s "bad/name" "x" '()))
          "invalid character")
(refused! "name starting with a dot"
          (lambda () (add-text-to-store s ".hidden" "x" '()))
          "can't begin with dot")
(refused! "name with a space"
          (lambda () (add-text-to-store s "a b" "x" '()))
          "invalid character")
(refused! "name with a non-ASCII character"
          (lambda () (add-text-to-store s "caf\u00e9" "x" '()))
          "invalid character")
(record! "name with a non-ASCII character: raw error bytes"
         (raw-error-bytes (connect) 8
                          (lambda (p)
                            (write-string "caf\u00e9" p)
                            (write-string "x" p)
                            (write-string-list '() p))))
(refused! "name with a tilde"
          (lambda () (add-text-to-store s "a~b" "x" '()))
          "invalid character")
(expect-ok! "name with every allowed punctuation"
            (lambda () (add-text-to-store s "a+-._?=b" "x" '())))
(step! "empty name" (lambda () (add-text-to-store s "" "x" '())))
(record! "alive after empty name" (alive? s))

;;; A reference that is not valid: refused, and the session goes on.  The
;;; file may remain on disk as an invalid item; record what is there.

(let ((expected (text-store-path "dangling" "x" (list %missing))))
  (refused! "reference not valid"
            (lambda () (add-text-to-store s "dangling" "x" (list %missing)))
            "is not valid")
  (record! "reference not valid: item valid afterwards"
           (valid-path? s expected)))

;;; A reference that is not a store path: the request cannot be read, so
;;; the session ends.

(let* ((c (connect))
       (o (step! "reference not in the store"
                 (lambda () (add-text-to-store c "outside" "x" '("/etc/passwd"))))))
  (check! "reference not in the store is refused"
          (error-contains? o "is not in the store") o)
  (step-alive! "alive after reference not in the store" c #f))

(step-alive! "first session still alive" s #t)

(finish!)
