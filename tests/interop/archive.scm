;;; archive.scm -- the store side of the `guix archive' scenario (the
;;; commands themselves are run by tests/integration/interop.rs).
;;;
;;;   archive.scm OUT.json make
;;;       adds a small closure (text items with references, a tree with an
;;;       executable, a symlink and a large file) and records its paths
;;;       under the step "items", top item first;
;;;   archive.scm OUT.json check PATH...
;;;       records, for each PATH, whether it is valid, its path info and
;;;       its files, and checks them against the client's own view.

(load (string-append (dirname (current-filename)) "/common.scm"))

(define s (connect))

(define (make-items!)
  (let* ((base (add-text-to-store s "base" "base\n" '()))
         (tree (add-to-store s "tree" #t "sha256"
                             (make-tree "tree"
                                        `(directory
                                          ("bin" (directory
                                                  ("run" (executable
                                                          ,(string->utf8
                                                            "#!/bin/sh\n")))))
                                          ("data" (regular
                                                   ,(pattern-bytes
                                                     (* 2 1024 1024) 11)))
                                          ("link" (symlink "bin/run"))))))
         (top (add-text-to-store s "top" (string-append tree "\n" base "\n")
                                 (list tree base))))
    (record! "items" (vector top tree base))))

(define (check-items! paths)
  (for-each
   (lambda (path)
     (let ((valid (expect-ok! (string-append "valid-path? " (basename path))
                              (lambda () (valid-path? s path)))))
       (check! (string-append "imported: " (basename path)) (eq? valid #t))
       (when valid
         (let ((info (expect-ok! (string-append "query-path-info "
                                                (basename path))
                                 (lambda () (query-path-info s path))
                                 #:encode path-info->json)))
           (when info (check-path-info! (basename path) info path)))
         (record! (string-append "files of " (basename path))
                  (listing path)))))
   paths))

(match (script-arguments)
  (("make") (make-items!))
  (("check" paths ...) (check-items! paths))
  (x (error "usage: archive.scm OUT.json make | check PATH..." x)))

(finish!)
